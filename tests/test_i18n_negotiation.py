"""Locale fallbacks for scripts and regions: zh-TW reaches Traditional Chinese, zh-CN Simplified."""

from __future__ import annotations

from typing import Any

import pytest

from keystage.engine.i18n import fallbacks


@pytest.mark.parametrize(("header", "lang"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh-Hans"),
    ("zh-TW", "zh-Hant"),
    ("zh-HK", "zh-Hant"),
    ("zh-Hant-TW", "zh-Hant"),
    ("zh", "zh-Hans"),
    ("de-AT", "de"),
    ("pt-BR", "pt-BR"),
    ("iw", "he"),
])
async def test_accept_language_reaches_the_right_catalog(keystage_client: Any, header: str, lang: str) -> None:
    response = await keystage_client.get("/flows/nope/", headers={"Accept-Language": header, "Accept": "text/html"})
    assert f'<html lang="{lang}"' in await response.get_data(as_text=True)


def test_fallbacks() -> None:
    assert fallbacks("zh_TW") == ["zh_TW", "zh_Hant", "zh"]
    assert fallbacks("de_AT") == ["de_AT", "de"]
