"""SAML SSO responses per second (signed assertion) against the cost of one RSA-SHA256 XML signature.

In-process: the app runs its serving lifecycle and is driven through httpx's ASGI transport (no
HTTP server, so what is measured is keystage's own work plus PostgreSQL round trips). A signed-in
user asks for SP-initiated SSO (HTTP-Redirect AuthnRequest) and is walked through every hop — the
request check, the authorization flow (implicit consent), the signed Response page. Each round,
interleaved so that noise hits every kind alike:

  sso_sequential   one SSO after another: wall ms per SSO, and CPU ms per SSO of this process plus
                   its children (pysaml2 signs by running xmlsec1, a child process)
  sso_concurrent   --concurrency users at once (each their own session): SSO responses per second
  make_response    building and signing the Response alone (sso.make_response, as keystage runs it)
  sign_xmlsec1     one RSA-SHA256 enveloped signature over the same assertion, the way pysaml2 makes it
                   by default (temporary files, an xmlsec1 process)
  sign_inprocess   the same signature the way keystage makes it: libxmlsec1 in-process (python-xmlsec)
  rsa_raw          RSA-2048 PKCS#1 v1.5 SHA-256 over 1 KiB (cryptography): the arithmetic alone

Noise: a fixed CPU-bound calibration loop per round, and the load average before and after.

    KEYSTAGE_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/saml.py --rounds 5 --sso 40 --json bench/results/saml.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg
import httpx

from keystage.engine.app import create_app
from keystage.engine.blueprints import apply_defaults
from keystage.engine.runtime import Keystage
from keystage.engine.testing import apply_blueprint_to, base_settings, sign_in, with_database

SERVER = os.environ.get("KEYSTAGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE = "http://127.0.0.1:9000"
SP = "https://sp.example.org/metadata"
ACS = "https://sp.example.org/saml/acs"
PASSWORD = "bench-password-alice"
BLUEPRINT = json.dumps({"version": 1, "metadata": {"name": "saml-bench"}, "entries": [
    {"model": "provider", "identifiers": {"name": "bench"}, "attrs": {"type": "saml", "config": {
        "sp_entity_id": SP, "acs_urls": [ACS], "signed": "assertion", "name_id_format": "persistent"}}},
    {"model": "application", "identifiers": {"slug": "bench"}, "attrs": {"name": "Bench", "provider": "bench"}},
]})


def calibrate() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i * i
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def fmt(s: dict[str, Any], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (the xmlsec1 runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def authn_request_url() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = ('<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
           f'ID="_{secrets.token_hex(16)}" Version="2.0" IssueInstant="{now}" '
           f'Destination="{BASE}/saml/bench/sso" AssertionConsumerServiceURL="{ACS}" '
           'ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST">'
           f'<saml:Issuer>{SP}</saml:Issuer></samlp:AuthnRequest>')
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    encoded = base64.b64encode(deflater.compress(xml.encode()) + deflater.flush()).decode()
    return "/saml/bench/sso?" + urlencode({"SAMLRequest": encoded})


async def one_sso(browser: httpx.AsyncClient) -> None:
    url = authn_request_url()
    for _ in range(10):
        response = await browser.get(url)
        if response.status_code == 302:
            url = response.headers["location"]
            if urlsplit(url).netloc:
                raise RuntimeError(f"left keystage: {url}")
            continue
        if response.status_code == 200 and 'name="SAMLResponse"' in response.text:
            return
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    raise RuntimeError("too many hops")


async def signed_in_browser(app: Any) -> httpx.AsyncClient:
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    await sign_in(browser, "/", "alice", PASSWORD)
    return browser


def signature_jobs(sp: Any) -> tuple[Any, Any, Any]:
    """Three ways to make one RSA-SHA256 signature over the assertion of a real Response."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from saml2.s_utils import sid
    from saml2.samlp import response_from_string
    from saml2.sigver import CryptoBackendXmlSec1, pre_signature_part

    from keystage.plugins.providers.saml import sso
    from keystage.plugins.providers.saml.config import DIGEST_ALGORITHMS, SIGNATURE_ALGORITHMS

    server, config = sp.server, sp.config
    request = sso.AuthnRequest(id=None, acs_url=ACS, relay_state=None)
    subject = sso.NameID(format=sso.NAME_ID_FORMATS["persistent"], text="_" + "a" * 40)
    values = {"username": ["alice"], "email": ["alice@example.org"], "groups": ["staff"]}
    response_xml = base64.b64decode(sso.make_response(server, config, request, subject, values,
                                                      auth_time=time.time())).decode()
    assertion = response_from_string(response_xml).assertion[0]
    sign_alg, digest_alg = SIGNATURE_ALGORITHMS["rsa-sha256"], DIGEST_ALGORITHMS["sha256"]

    def template() -> tuple[str, str]:
        assertion.id = sid()
        assertion.signature = pre_signature_part(assertion.id, server.sec.my_cert, 1, sign_alg=sign_alg,
                                                 digest_alg=digest_alg)
        return str(assertion), assertion.id

    subprocess_backend = CryptoBackendXmlSec1(server.config.xmlsec_binary)

    def xmlsec1_sign() -> None:  # what pysaml2 does without in-process signing
        xml, node_id = template()
        subprocess_backend.sign_statement(xml, "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
                                          sp.keys.key_file, node_id)

    key_pem = Path(sp.keys.key_file).read_bytes()
    from keystage.plugins.providers.saml.server import InProcessSigning, in_process_signing_available

    in_process = InProcessSigning(server.config.xmlsec_binary) if in_process_signing_available() else None

    def inprocess_sign() -> None:  # what keystage does (saml/server.py)
        xml, node_id = template()
        assert in_process is not None
        in_process.sign_statement(xml, "urn:oasis:names:tc:SAML:2.0:assertion:Assertion", sp.keys.key_file,
                                  node_id)

    private = serialization.load_pem_private_key(key_pem, password=None)
    blob = secrets.token_bytes(1024)

    def rsa_raw() -> None:
        private.sign(blob, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]

    return xmlsec1_sign, (inprocess_sign if in_process is not None else None), rsa_raw


def timed(job: Any, count: int) -> tuple[float, float]:
    """Median wall ms and mean CPU ms (process + children) of ``count`` calls."""
    walls = []
    cpu0 = cpu_now()
    for _ in range(count):
        t = time.perf_counter()
        job()
        walls.append((time.perf_counter() - t) * 1000)
    return statistics.median(walls), (cpu_now() - cpu0) * 1000 / count


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"keystage_samlbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(SERVER)
    await admin.execute(f'CREATE DATABASE "{name}"')
    raw: dict[str, list[float]] = {k: [] for k in (
        "calibration_s", "sso_ms", "sso_cpu_ms", "sso_per_s_concurrent", "make_response_ms", "make_response_cpu_ms",
        "sign_xmlsec1_ms", "sign_xmlsec1_cpu_ms", "sign_inprocess_ms", "rsa_raw_ms")}
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = base_settings(with_database(SERVER, name), Path(tmp))
            app = create_app(settings, keystage=Keystage(settings))
            async with app.test_app():
                kernel = app.extensions["keystage"]
                await apply_defaults(kernel)
                await kernel.users.create("alice", password=PASSWORD, email="alice@example.org")
                await apply_blueprint_to(kernel, BLUEPRINT)
                browsers = [await signed_in_browser(app) for _ in range(args.concurrency)]
                from keystage.plugins.providers.saml import service_providers, sso

                sp = await service_providers.find(kernel, "bench")
                assert sp is not None
                xmlsec1_sign, inprocess_sign, rsa_raw = signature_jobs(sp)
                user = await kernel.users.find("alice")
                subject = sso.name_id(sp.config, sp.keys, user)
                values = {"username": ["alice"], "email": ["alice@example.org"], "groups": []}
                request = sso.AuthnRequest(id="_bench", acs_url=ACS, relay_state=None)

                def make() -> None:
                    sso.make_response(sp.server, sp.config, request, subject, values, auth_time=time.time())

                for _ in range(3):  # warm: caches, sandbox, first xmlsec1 runs
                    await one_sso(browsers[0])
                for round_no in range(args.rounds):
                    raw["calibration_s"].append(calibrate())
                    walls = []
                    cpu0 = cpu_now()
                    for _ in range(args.sso):
                        t = time.perf_counter()
                        await one_sso(browsers[0])
                        walls.append((time.perf_counter() - t) * 1000)
                    raw["sso_cpu_ms"].append((cpu_now() - cpu0) * 1000 / args.sso)
                    raw["sso_ms"].append(statistics.median(walls))

                    async def worker(browser: httpx.AsyncClient, count: int) -> None:
                        for _ in range(count):
                            await one_sso(browser)

                    per = max(1, args.sso // args.concurrency)
                    t = time.perf_counter()
                    await asyncio.gather(*(worker(b, per) for b in browsers))
                    raw["sso_per_s_concurrent"].append(per * len(browsers) / (time.perf_counter() - t))

                    wall, cpu = timed(make, args.signatures)
                    raw["make_response_ms"].append(wall)
                    raw["make_response_cpu_ms"].append(cpu)
                    wall, cpu = timed(xmlsec1_sign, args.signatures)
                    raw["sign_xmlsec1_ms"].append(wall)
                    raw["sign_xmlsec1_cpu_ms"].append(cpu)
                    if inprocess_sign is not None:
                        raw["sign_inprocess_ms"].append(timed(inprocess_sign, args.signatures * 5)[0])
                    raw["rsa_raw_ms"].append(timed(rsa_raw, args.signatures * 5)[0])
                    print(f"round {round_no + 1}/{args.rounds}: SSO {raw['sso_ms'][-1]:.1f} ms, "
                          f"xmlsec1 signature {raw['sign_xmlsec1_ms'][-1]:.1f} ms", file=sys.stderr)
                for browser in browsers:
                    await browser.aclose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    out = {k: summary(v) for k, v in raw.items() if v}
    sso_ms = out["sso_ms"]["median"]
    signature = out["sign_inprocess_ms"]["median"] if "sign_inprocess_ms" in out else out["sign_xmlsec1_ms"]["median"]
    out["derived"] = {
        "sso_per_s_sequential": 1000 / sso_ms,
        "sso_per_s_concurrent": out["sso_per_s_concurrent"]["median"],
        "signature_ms": signature,
        "sso_over_signature": sso_ms / signature,
        "make_response_over_signature": out["make_response_ms"]["median"] / signature,
        "sso_over_xmlsec1_signature": sso_ms / out["sign_xmlsec1_ms"]["median"],
        "xmlsec1_over_inprocess": out["sign_xmlsec1_ms"]["median"] / signature,
    }
    cal = raw["calibration_s"]
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(),
                      "calibration_spread_pct": 100 * (max(cal) - min(cal)) / statistics.median(cal)}
    out["args"] = vars(args)
    return out


def print_report(out: dict[str, Any]) -> None:
    d, m = out["derived"], out["machine"]
    rows = [
        ("SSO, sequential: wall ms per SSO", fmt(out["sso_ms"])),
        ("SSO, sequential: CPU ms per SSO (process + xmlsec1)", fmt(out["sso_cpu_ms"])),
        (f"SSO, {out['args']['concurrency']} users at once: SSO/s", fmt(out["sso_per_s_concurrent"], 1)),
        ("make_response (pysaml2, signed assertion): ms", fmt(out["make_response_ms"])),
        ("one RSA-SHA256 XML signature, xmlsec1 process (pysaml2's default): ms", fmt(out["sign_xmlsec1_ms"])),
        ("  its CPU ms (process + xmlsec1)", fmt(out["sign_xmlsec1_cpu_ms"])),
    ]
    if "sign_inprocess_ms" in out:
        rows.append(("one RSA-SHA256 XML signature, in-process (keystage): ms", fmt(out["sign_inprocess_ms"], 3)))
    rows.append(("RSA-2048 PKCS#1 v1.5 SHA-256, raw: ms", fmt(out["rsa_raw_ms"], 3)))
    width = max(len(r[0]) for r in rows)
    print("SAML SSO (median [min-max] over rounds)")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print(f"SSO responses/s: {d['sso_per_s_sequential']:.1f} sequential, {d['sso_per_s_concurrent']:.1f} "
          f"with {out['args']['concurrency']} users at once")
    print(f"one SSO = {d['sso_over_signature']:.1f}x the signature it carries ({d['signature_ms']:.2f} ms); "
          f"make_response = {d['make_response_over_signature']:.1f}x; "
          f"one SSO = {d['sso_over_xmlsec1_signature']:.2f}x one signature by an xmlsec1 process, which costs "
          f"{d['xmlsec1_over_inprocess']:.0f}x the in-process one")
    print(f"machine: {m['cpus']} CPUs, load {m['loadavg_before'][0]:.1f} before / {m['loadavg_after'][0]:.1f} after, "
          f"calibration spread {m['calibration_spread_pct']:.0f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sso", type=int, default=40, help="SSOs per round")
    parser.add_argument("--signatures", type=int, default=40, help="signatures (and make_response calls) per round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write everything here")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
