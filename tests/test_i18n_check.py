"""``keystage i18n check`` over the shipped catalogs (a shipped locale below 100 % fails CI),
and each rule of the check, update, stats, compile and extract on small catalogs in tmp_path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from keystage.engine import i18n, i18n_tools
from keystage.engine.cli_i18n import i18n as i18n_cli

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "locales"
# Every directory under locales/ with a keystage.po ships, and must be complete.
SHIPPED = sorted(i18n_tools.catalog_paths(LOCALES))
# What issue 5 promises, plus the generated pseudo-locale.
REQUIRED = ("de", "fr", "es", "it", "pt_BR", "nl", "pl", "ru", "uk", "tr", "sv", "cs", "ja", "ko",
            "zh_Hans", "zh_Hant", "ar", "he", "fa", "id", "en_XA")


# -- the shipped catalogs ----------------------------------------------------------------------


def test_which_locales_ship() -> None:
    print(f"shipped locales ({len(SHIPPED)}): {', '.join(SHIPPED)}")
    assert set(SHIPPED) <= set(i18n.Catalogs([]).locales), "every shipped catalog must load"
    missing = sorted(set(REQUIRED) - set(SHIPPED))
    assert not missing, f"locales promised but not shipped: {missing}"


@pytest.mark.parametrize("locale", SHIPPED)
def test_shipped_catalog_passes_the_check(locale: str) -> None:
    problems = i18n_tools.check(LOCALES, locales=[locale])
    assert not problems, f"locale {locale}: {len(problems)} problem(s) (`keystage i18n check --locale {locale}`):\n" + \
        "\n".join(p.format(ROOT) for p in problems)


def test_the_cli_check_agrees() -> None:
    result = CliRunner().invoke(i18n_cli, ["check"])
    problems = i18n_tools.check(LOCALES)
    assert result.exit_code == (1 if problems else 0), result.output
    if not problems:
        assert f"ok: {len(SHIPPED)} catalog(s)" in result.output


# -- small catalogs in tmp_path ---------------------------------------------------------------

TEMPLATE = """\
msgid ""
msgstr ""
"Content-Type: text/plain; charset=utf-8\\n"

#: app.py:1
msgid "Sign in"
msgstr ""

#: app.py:2
#, python-format
msgid "Hello, %(name)s"
msgstr ""

#: app.py:3
#, python-format
msgid "%(num)d file"
msgid_plural "%(num)d files"
msgstr[0] ""
msgstr[1] ""
"""

GOOD = {
    "de": ("nplurals=2; plural=(n != 1);", ["Anmelden", "Hallo, %(name)s"], ["%(num)d Datei", "%(num)d Dateien"]),
    "pl": ("nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);",
           ["Zaloguj się", "Witaj, %(name)s"], ["%(num)d plik", "%(num)d pliki", "%(num)d plików"]),
}


def po(locale: str, plural_forms: str | None = None, singles: list[str] | None = None,
       plurals: list[str] | None = None, *, language: str | None = None, header_fuzzy: bool = False,
       flags: tuple[str, str, str] = ("", "", ""), extra: str = "") -> str:
    default_forms, default_singles, default_plurals = GOOD[locale]
    forms = plural_forms or default_forms
    singles = default_singles if singles is None else singles
    plurals = default_plurals if plurals is None else plurals
    plural_lines = "\n".join(f'msgstr[{i}] "{s}"' for i, s in enumerate(plurals))
    return textwrap.dedent(f"""\
        {"#, fuzzy" if header_fuzzy else ""}
        msgid ""
        msgstr ""
        "Language: {language or locale}\\n"
        "Plural-Forms: {forms}\\n"
        "Content-Type: text/plain; charset=utf-8\\n"

        #: app.py:1
        {flags[0]}
        msgid "Sign in"
        msgstr "{singles[0]}"

        #: app.py:2
        #, python-format{flags[1]}
        msgid "Hello, %(name)s"
        msgstr "{singles[1]}"

        #: app.py:3
        #, python-format{flags[2]}
        msgid "%(num)d file"
        msgid_plural "%(num)d files"
        """) + plural_lines + "\n" + extra


def tree(tmp_path: Path, catalogs: dict[str, str], domain: str = "keystage", template: str | None = TEMPLATE) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if template is not None:
        (tmp_path / f"{domain}.pot").write_text(template, "utf-8")
    for locale, text in catalogs.items():
        path = tmp_path / locale / "LC_MESSAGES" / f"{domain}.po"
        path.parent.mkdir(parents=True)
        path.write_text(text, "utf-8")
    return tmp_path


def messages(tmp_path: Path, **kwargs: str) -> list[str]:
    return [p.format(tmp_path) for p in i18n_tools.check(tree(tmp_path, kwargs))]


def test_good_catalogs_pass(tmp_path: Path) -> None:
    assert messages(tmp_path, de=po("de"), pl=po("pl")) == []


@pytest.mark.parametrize(("good", "bad"), [
    ('msgstr "Anmelden"', "msgstr Anmelden"),          # no quotes
    ('msgstr "Anmelden"', 'msgstr "Anmelden'),         # a missing closing quote
    ('msgstr "Anmelden"', 'msgstr "An"melden"'),       # an unescaped quote
    ('msgid "Sign in"', 'msgid "Sign in"\nSign in'),   # stray text
    ('msgstr "Anmelden"', 'msgstr[x] "Anmelden"'),     # a malformed plural index
])
def test_syntax_error(tmp_path: Path, good: str, bad: str) -> None:
    broken = po("de").replace(good, bad)
    found = messages(tmp_path, de=broken)
    assert len(found) == 1 and found[0].startswith("de/LC_MESSAGES/keystage.po:") and "syntax error" in found[0]
    line = int(found[0].split(":")[1])
    assert (tmp_path / "de/LC_MESSAGES/keystage.po").read_text().splitlines()[line - 1] == bad.split("\n")[-1]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    root = tree(tmp_path, {})
    path = root / "de/LC_MESSAGES/keystage.po"
    path.parent.mkdir(parents=True)
    path.write_bytes(po("de").encode("latin-1", errors="replace").replace(b"Anmelden", b"Anmelden \xe9"))
    found = [p.message for p in i18n_tools.check(root)]
    assert len(found) == 1 and found[0].startswith("syntax error: not UTF-8")


def test_placeholder_renamed_or_dropped(tmp_path: Path) -> None:
    found = messages(tmp_path, de=po("de", singles=["Anmelden", "Hallo, %(nom)s"]))
    assert found == ["de/LC_MESSAGES/keystage.po:15: de: 'Hello, %(name)s' placeholders ['%(nom)s'] "
                     "differ from the original's ['%(name)s']"]
    # The count may be left out of a form used for exactly one number ("eine Datei" for 1) ...
    assert messages(tmp_path / "b", de=po("de", plurals=["eine Datei", "%(num)d Dateien"])) == []
    # ... not out of a form used for many numbers, and never renamed.
    found = messages(tmp_path / "c", de=po("de", plurals=["eine Datei", "Dateien"]))
    assert found == ["de/LC_MESSAGES/keystage.po:20: de: '%(num)d file' form 1: placeholders [] "
                     "differ from the original's ['%(num)d']"]
    found = messages(tmp_path / "d", de=po("de", plurals=["%(n)d Datei", "%(num)d Dateien"]))
    assert len(found) == 1 and "'%(num)d file' form 0: placeholders ['%(n)d']" in found[0]


def test_python_cannot_format_it(tmp_path: Path) -> None:
    found = messages(tmp_path, de=po("de", singles=["Anmelden", "Hallo, %(name)s zu 100 %"]))
    assert len(found) == 1 and "cannot be formatted by Python" in found[0] and "%%" in found[0]


def test_wrong_number_of_plural_forms_in_an_entry(tmp_path: Path) -> None:
    found = messages(tmp_path, pl=po("pl", plurals=["%(num)d plik", "%(num)d pliki"]))
    assert found == ["pl/LC_MESSAGES/keystage.po:20: pl: '%(num)d file' has 2 plural forms, "
                     "the catalog's Plural-Forms has 3"]
    found = messages(tmp_path / "b", de=po("de", plurals=["%(num)d Datei", "%(num)d Dateien", "%(num)d Dateien"]))
    assert found == ["de/LC_MESSAGES/keystage.po:20: de: '%(num)d file' has 3 plural forms, "
                     "the catalog's Plural-Forms has 2"]


def test_plural_forms_header_disagrees_with_cldr(tmp_path: Path) -> None:
    # Polish with two forms (a copy of the German header).
    found = messages(tmp_path, pl=po("pl", "nplurals=2; plural=(n != 1);", plurals=["%(num)d plik", "%(num)d pliki"]))
    assert any("pl/LC_MESSAGES/keystage.po:5: pl: Plural-Forms says nplurals=2, CLDR has 3 forms" in f
               for f in found), found
    # The right number of forms, the wrong rule (12-14 are "many" in Polish, not "few").
    wrong = "nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 ? 1 : 2);"
    found = messages(tmp_path / "b", pl=po("pl", wrong))
    assert len(found) == 1 and "disagrees with CLDR for n in [12, 13, 14, 112" in found[0]
    # Arabic with "many" and "other" swapped (the header Babel before 2.19 wrote).
    swapped = "(n == 0 ? 0 : n == 1 ? 1 : n == 2 ? 2 : n % 100 >= 3 && n % 100 <= 10 ? 3 : n % 100 >= 11 && n % 100 <= 99 ? 5 : 4)"
    assert i18n_tools.plural_rule_errors("ar", 6, swapped)


def test_fuzzy_entries_and_a_fuzzy_header(tmp_path: Path) -> None:
    found = messages(tmp_path, de=po("de", flags=("#, fuzzy", "", "")))
    assert found == ["de/LC_MESSAGES/keystage.po:10: de: 'Sign in' is fuzzy: check the translation, "
                     "then delete the `fuzzy` flag"]
    found = messages(tmp_path / "b", de=po("de", flags=("", ", fuzzy", "")))
    assert len(found) == 1 and "'Hello, %(name)s' is fuzzy" in found[0]
    found = messages(tmp_path / "c", de=po("de", header_fuzzy=True))
    assert found == ["de/LC_MESSAGES/keystage.po:1: de: the header is marked `#, fuzzy`: delete that line"]


def test_missing_untranslated_and_obsolete_entries(tmp_path: Path) -> None:
    found = messages(tmp_path, de=po("de", singles=["", "Hallo, %(name)s"], plurals=["%(num)d Datei", ""]))
    assert found == [
        "de/LC_MESSAGES/keystage.po:10: de: 'Sign in' is not translated",
        "de/LC_MESSAGES/keystage.po:20: de: '%(num)d file' is not translated (form 1)",
    ]
    missing = po("de").split("#: app.py:2")[0]
    extra = '\n#: old.py:1\nmsgid "Log in"\nmsgstr "Einloggen"\n'
    found = messages(tmp_path / "b", de=missing + extra)
    assert "keystage.pot:11: de: 'Hello, %(name)s' is missing from de/LC_MESSAGES/keystage.po" in "\n".join(found)
    assert "keystage.pot:16: de: '%(num)d file' is missing from" in "\n".join(found)
    assert any(f.endswith("de: 'Log in' is not in the template any more (run `keystage i18n update`)")
               for f in found)
    assert len(found) == 3


def test_language_header_must_match_the_folder(tmp_path: Path) -> None:
    found = messages(tmp_path, de=po("de", language="de_AT"))
    assert found == ["de/LC_MESSAGES/keystage.po:4: de: the Language header says 'de_AT', the folder 'de'"]


def test_locale_restriction_and_unknown_locale(tmp_path: Path) -> None:
    root = tree(tmp_path, {"de": po("de", singles=["", "Hallo, %(name)s"]), "pl": po("pl")})
    assert [p.locale for p in i18n_tools.check(root, locales=["pl"])] == []
    assert [p.locale for p in i18n_tools.check(root, locales=["de"])] == ["de"]
    assert [p.message for p in i18n_tools.check(root, locales=["xx"])] == ["no such catalog"]


def test_cli_check_stats_and_domain_dir_for_a_plugin(tmp_path: Path) -> None:
    root = tree(tmp_path, {"de": po("de", singles=["", "Hallo, %(name)s"], flags=("", "", ", fuzzy")),
                           "pl": po("pl")}, domain="hello")
    runner = CliRunner()
    result = runner.invoke(i18n_cli, ["check", "--domain-dir", str(root)])
    assert result.exit_code == 1
    assert "de/LC_MESSAGES/hello.po:10: de: 'Sign in' is not translated" in result.output
    assert "'%(num)d file' is fuzzy" in result.output and "pl:" not in result.output
    result = runner.invoke(i18n_cli, ["check", "--domain-dir", str(root), "--locale", "pl"])
    assert result.exit_code == 0 and "ok: 1 catalog(s) of hello (pl)" in result.output
    result = runner.invoke(i18n_cli, ["stats", "--domain-dir", str(root), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == [
        {"locale": "de", "total": 3, "translated": 1, "percent": 33.3, "fuzzy": 1, "missing": 1},
        {"locale": "pl", "total": 3, "translated": 3, "percent": 100.0, "fuzzy": 0, "missing": 0},
    ]
    result = runner.invoke(i18n_cli, ["stats", "--domain-dir", str(root)])
    assert result.exit_code == 0
    assert [line.split() for line in result.output.splitlines()] == [
        ["locale", "translated", "fuzzy", "missing", "total"],
        ["de", "33.3", "%", "1", "1", "3"],
        ["pl", "100.0", "%", "0", "0", "3"],
    ]
    # Two domains in one folder: the plugin author must say which.
    (root / "other.pot").write_text(TEMPLATE, "utf-8")
    result = runner.invoke(i18n_cli, ["check", "--domain-dir", str(root)])
    assert result.exit_code == 2 and "pass --domain" in result.output
    result = runner.invoke(i18n_cli, ["check", "--domain-dir", str(root), "--domain", "hello", "--locale", "pl"])
    assert result.exit_code == 0


def test_a_catalog_without_a_template_is_still_checked(tmp_path: Path) -> None:
    root = tree(tmp_path, {"de": po("de", singles=["Anmelden", "Hallo, %(nom)s"])}, template=None)
    assert [p.msgid for p in i18n_tools.check(root)] == ["Hello, %(name)s"]


# -- update, compile, pseudo, extract --------------------------------------------------------------


def test_update_adds_new_entries_empty_and_drops_old_ones(tmp_path: Path) -> None:
    root = tree(tmp_path, {"de": po("de"), "en_XA": "msgid \"\"\nmsgstr \"\"\n\"Language: en_XA\\n\"\n"})
    new_template = TEMPLATE.replace('msgid "Sign in"', 'msgid "Sign in now"')
    (root / "keystage.pot").write_text(new_template, "utf-8")
    written = i18n_tools.update(root)
    assert sorted(p.parent.parent.name for p in written) == ["de", "en_XA"]
    [problem] = i18n_tools.check(root)
    # Without fuzzy matching the changed string arrives empty (not pre-filled with "Anmelden").
    assert (problem.locale, problem.msgid, problem.message) == ("de", "Sign in now", "is not translated")
    text = (root / "de/LC_MESSAGES/keystage.po").read_text("utf-8")
    assert text.splitlines()[problem.lineno - 1] == 'msgid "Sign in now"'  # file:line points at it
    assert "Anmelden" not in text and "Hallo, %(name)s" in text
    assert 'nplurals=2; plural=(n != 1)' in text  # the header survives
    # The pseudo-locale is regenerated, complete.
    assert "[Šîĝñ îñ ñöŵ ~~~~]" in (root / "en_XA/LC_MESSAGES/keystage.po").read_text("utf-8")


def test_update_with_fuzzy_matching(tmp_path: Path) -> None:
    root = tree(tmp_path, {"de": po("de")})
    (root / "keystage.pot").write_text(TEMPLATE.replace('msgid "Sign in"', 'msgid "Sign in!"'), "utf-8")
    i18n_tools.update(root, fuzzy=True)
    found = [p.format(root) for p in i18n_tools.check(root)]
    assert len(found) == 1 and "'Sign in!' is fuzzy" in found[0]


def test_compile_writes_mo_files(tmp_path: Path) -> None:
    import gettext

    root = tree(tmp_path, {"pl": po("pl")})
    [mo] = i18n_tools.compile_catalogs(root)
    with mo.open("rb") as handle:
        translations = gettext.GNUTranslations(handle)
    assert translations.gettext("Sign in") == "Zaloguj się"
    assert translations.ngettext("%(num)d file", "%(num)d files", 22) == "%(num)d pliki"


def test_pseudo_is_complete_and_passes_the_check(tmp_path: Path) -> None:
    root = tree(tmp_path, {})
    path = i18n_tools.write_pseudo(root)
    assert path == root / "en_XA/LC_MESSAGES/keystage.po"
    assert i18n_tools.check(root) == []
    assert [s.percent for s in i18n_tools.stats(root)] == [100.0]


def test_extract_collects_python_templates_and_blueprints(tmp_path: Path) -> None:
    output = i18n_tools.extract(ROOT, tmp_path / "keystage.pot")
    text = output.read_text("utf-8")
    assert 'msgid "Your session expired. Please start again."' in text  # engine/ Python
    assert "#: engine/executor.py:" in text  # locations relative to the checkout
    assert 'msgid "Stay signed in on this device"' in text  # a stage's Jinja template
    assert 'msgid "Language"' in text and "web/templates/base.html" in text
    assert 'msgid "Create your account"' in text  # a default blueprint's flow title
    assert "engine/default_blueprints/" in text


def test_tools_refuse_an_installed_copy_without_sources(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "keystage" / "engine"
    package.mkdir(parents=True)
    with pytest.raises(i18n_tools.I18nToolError, match="without its sources .*babel.cfg.*source checkout"):
        i18n_tools.source_root(package)
    assert i18n_tools.source_root(ROOT / "engine") == ROOT


def test_keystage_i18n_is_a_subcommand_of_keystage() -> None:
    from keystage.engine.cli import main

    assert main.commands["i18n"] is i18n_cli
    assert {"extract", "update", "compile", "check", "stats", "pseudo"} <= set(i18n_cli.commands)


# -- docs/translators.md, which translators follow ------------------------------------------------

TRANSLATORS_DOC = ROOT / "docs" / "translators.md"
GLOSSARY_TERMS = ("sign in", "password", "passkey", "security key", "recovery code", "consent", "username",
                  "email address", "two-factor authentication")


def test_the_glossary_covers_every_promised_locale() -> None:
    text = TRANSLATORS_DOC.read_text("utf-8")
    sections = {part.split(" ", 1)[0]: part for part in text.split("\n### ")[1:]}
    for locale in REQUIRED:
        if i18n_tools.is_pseudo(locale):
            continue
        assert locale in sections, f"docs/translators.md has no glossary section `### {locale} — ...`"
        rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
                for line in sections[locale].splitlines() if line.startswith("| ") and line.count("|") >= 3}
        missing = [term for term in GLOSSARY_TERMS if not rows.get(term)]
        assert not missing, f"{locale}: glossary lacks {missing}"


def test_the_documented_plural_forms_headers_agree_with_cldr() -> None:
    documented: dict[str, str] = {}
    for line in TRANSLATORS_DOC.read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.replace("\\|", "\x00").split("|")]
        if len(cells) >= 4 and cells[-2].startswith("`nplurals="):
            header = cells[-2].strip("`").replace("\x00", "|")
            for locale in cells[1].split(","):
                documented[locale.strip()] = header
    assert set(REQUIRED) - {"en_XA"} <= set(documented), sorted(set(REQUIRED) - set(documented))
    for locale, header in documented.items():
        nplurals, expression = header.split(";", 1)
        expression = expression.strip().removeprefix("plural=").rstrip(";")
        assert i18n_tools.plural_rule_errors(locale, int(nplurals.split("=")[1]), expression) == [], locale
