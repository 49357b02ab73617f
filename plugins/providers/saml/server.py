"""pysaml2's IdP ``Server`` for one provider: built from its configuration, cached per process
while the configuration and keys are unchanged.

Each provider is its own IdP entity (entity id = its metadata URL), so that an SP only ever sees
the endpoints and the certificate meant for it.
"""

from __future__ import annotations

import json
import shutil
import threading
from typing import TYPE_CHECKING, Any

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2 import saml
from saml2.attribute_converter import AttributeConverter
from saml2.config import IdPConfig
from saml2.s_utils import do_ava, factory
from saml2.saml import NAME_FORMAT_BASIC, NAME_FORMAT_UNSPECIFIED, NAME_FORMAT_URI
from saml2.server import Server
from saml2.sigver import CryptoBackendXmlSec1, SignatureError, get_pem_wrapped_unwrapped, make_temp, \
    pre_encryption_part

from . import metadata
from .config import DIGEST_ALGORITHMS, ENCRYPTION_ALGORITHMS, NAME_ID_FORMATS, SIGNATURE_ALGORITHMS

if TYPE_CHECKING:
    from .config import SAMLConfig
    from .keys import ProviderKeys

NAME_FORMATS = {"basic": NAME_FORMAT_BASIC, "uri": NAME_FORMAT_URI, "unspecified": NAME_FORMAT_UNSPECIFIED}
_build_lock = threading.Lock()


class SigningUnavailable(RuntimeError):
    """xmlsec1, which pysaml2 signs with, is not installed."""


class Verbatim(AttributeConverter):
    """Attributes under exactly the names the admin gave (pysaml2's own converters rename
    ``email`` to ``urn:mace:dir:attribute-def:email`` or lower-case names)."""

    def to_(self, attrvals: dict[str, Any]) -> list[Any]:
        return [factory(saml.Attribute, name=name, name_format=self.name_format, attribute_value=do_ava(values))
                for name, values in attrvals.items()]


class IdPServer(Server):
    """pysaml2's Server, encrypting assertions with the provider's algorithm: pysaml2's own choice
    is Triple DES, which no new deployment should use."""

    encryption: tuple[str, str] = ENCRYPTION_ALGORITHMS["aes256-gcm"]

    def _encrypt_assertion(self, encrypt_cert: str | None, sp_entity_id: str, response: Any,
                           node_xpath: str | None = None) -> Any:
        if not encrypt_cert:
            raise ValueError("no encryption certificate for the SP")
        wrapped, unwrapped = get_pem_wrapped_unwrapped(encrypt_cert)
        cert_file = make_temp(wrapped.encode("ascii"), decode=False, delete_tmpfiles=self.config.delete_tmpfiles)
        method, session_key = self.encryption
        template = pre_encryption_part(encrypt_cert=unwrapped, msg_enc=method)
        return self.sec.encrypt_assertion(response, cert_file.name, template, key_type=session_key,
                                          node_xpath=node_xpath)


DSIG = "{http://www.w3.org/2000/09/xmldsig#}Signature"


class InProcessSigning(CryptoBackendXmlSec1):
    """pysaml2's xmlsec1 backend, signing in-process through libxmlsec1 (python-xmlsec) instead of
    starting an ``xmlsec1`` process per signature: the same library and the same signature, without
    the ~70 ms of a process start and temporary files (bench/saml.py). Verifying, encrypting and
    decrypting still run ``xmlsec1`` as pysaml2 does."""

    def __init__(self, xmlsec_binary: str, **kwargs: Any) -> None:
        super().__init__(xmlsec_binary, **kwargs)
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _key(self, key_file: str) -> Any:
        import xmlsec

        with self._lock:
            key = self._keys.get(key_file)
            if key is None:
                key = self._keys[key_file] = xmlsec.Key.from_file(key_file, xmlsec.KeyFormat.PEM)
        return key

    def sign_statement(self, statement: Any, node_name: str, key_file: str, node_id: str | None) -> str:
        import xmlsec
        from lxml import etree

        text = str(statement).encode("utf-8") if not isinstance(statement, bytes) else statement
        # Our own document (pysaml2 just wrote it), parsed without network access or entities.
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
        root = etree.fromstring(text, parser)
        xmlsec.tree.add_ids(root, ["ID"])
        if node_id:
            owners = [e for e in root.iter() if e.get("ID") == node_id]
            if len(owners) != 1:
                raise SignatureError(f"no single element with ID {node_id!r} to sign")
            templates = [child for child in owners[0] if child.tag == DSIG]
        else:
            templates = list(root.iter(DSIG))
        if not templates:
            raise SignatureError("no signature template to fill")
        context = xmlsec.SignatureContext()
        context.key = self._key(key_file)
        try:
            context.sign(templates[0])
        except xmlsec.Error as exc:
            raise SignatureError(f"libxmlsec1 could not sign: {exc}") from None
        return '<?xml version="1.0"?>\n' + etree.tostring(root, encoding="unicode")


def in_process_signing_available() -> bool:
    """python-xmlsec imports and agrees with lxml on libxml2 (it refuses to run otherwise)."""
    import importlib

    try:
        importlib.import_module("lxml.etree")
        importlib.import_module("xmlsec")
    except Exception:  # ImportError, or xmlsec's libxml2 version mismatch error
        return False
    return True


def xmlsec_binary() -> str:
    found = shutil.which("xmlsec1")
    if found is None:
        raise SigningUnavailable("xmlsec1 is not installed (Debian: apt-get install xmlsec1)")
    return found


def urls(base: str, slug: str) -> dict[str, str]:
    root = f"{base}/saml/{slug}"
    return {"entity_id": f"{root}/metadata", "sso": f"{root}/sso", "slo": f"{root}/slo"}


def idp_config(config: SAMLConfig, keys: ProviderKeys, base: str, slug: str, name: str) -> IdPConfig:
    where = urls(base, slug)
    conf = {
        "entityid": where["entity_id"],
        "xmlsec_binary": xmlsec_binary(),
        "key_file": keys.key_file,
        "cert_file": keys.cert_file,
        "metadata": {"inline": [metadata.sp_metadata_xml(config)]},
        "accepted_time_diff": config.clock_skew,
        "signing_algorithm": SIGNATURE_ALGORITHMS[config.signature_algorithm],
        "digest_algorithm": DIGEST_ALGORITHMS[config.digest_algorithm],
        "delete_tmpfiles": True,
        "service": {"idp": {
            "name": name,
            "endpoints": {
                "single_sign_on_service": [(where["sso"], BINDING_HTTP_REDIRECT), (where["sso"], BINDING_HTTP_POST)],
                "single_logout_service": [(where["slo"], BINDING_HTTP_REDIRECT), (where["slo"], BINDING_HTTP_POST)],
            },
            "want_authn_requests_signed": config.want_authn_requests_signed,
            "name_id_format": [NAME_ID_FORMATS[config.name_id_format]],
            "sign_response": config.sign_response,
            "sign_assertion": config.sign_assertion,
            "policy": {"default": {
                "lifetime": {"seconds": config.assertion_lifetime},
                "attribute_restrictions": None,
                "name_form": NAME_FORMATS[config.attribute_name_format],
            }},
        }},
    }
    built = IdPConfig()
    built.load(conf)
    built.attribute_converters = [Verbatim(NAME_FORMATS[config.attribute_name_format])]
    return built


def server_for(state: dict[str, Any], provider_id: int, config: SAMLConfig, keys: ProviderKeys, base: str,
               slug: str, name: str) -> Server:
    """The cached Server of a provider, rebuilt when anything it was built from changed."""
    version = json.dumps([config.model_dump(mode="json"), keys.cert_file, base, slug, name], sort_keys=True)
    servers: dict[int, tuple[str, Server]] = state.setdefault("saml_servers", {})
    cached = servers.get(provider_id)
    if cached is not None and cached[0] == version:
        return cached[1]
    with _build_lock:
        server = IdPServer(config=idp_config(config, keys, base, slug, name))
        server.encryption = ENCRYPTION_ALGORITHMS[config.encryption_algorithm]
        if in_process_signing_available():
            server.sec.crypto = InProcessSigning(server.config.xmlsec_binary,
                                                 delete_tmpfiles=server.config.delete_tmpfiles)
    servers[provider_id] = (version, server)
    return server
