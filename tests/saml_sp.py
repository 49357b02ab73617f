"""A SAML service provider for the tests that is not built on pysaml2: python3-saml (OneLogin),
in strict mode, so it checks our signatures, audience, destination, recipient, validity window
and InResponseTo the way a real SP does."""

from __future__ import annotations

import base64
import datetime
import html
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils


def key_pair(common_name: str = "sp.example.org") -> tuple[str, str]:
    """An RSA key and a self-signed certificate, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def post_form(page: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of keystage's auto-submitting POST-binding page."""
    action = re.search(r'<form method="post" action="([^"]*)" data-autosubmit>', page)
    assert action is not None, page[:2000]
    fields = {html.unescape(n): html.unescape(v)
              for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)}
    return html.unescape(action.group(1)), fields


class OneLoginSP:
    """One SP: ``login_url()`` / ``login_form()`` make AuthnRequests, ``accept()`` checks a Response."""

    def __init__(self, idp_metadata: str, *, entity_id: str = "https://sp.example.org/metadata",
                 acs: str = "https://sp.example.org/saml/acs", sls: str = "https://sp.example.org/saml/sls",
                 sign_requests: bool = True, want_encrypted: bool = False, want_messages_signed: bool = False,
                 name_id_format: str = C.NAMEID_PERSISTENT, signature_algorithm: str = C.RSA_SHA256,
                 key_pem: tuple[str, str] | None = None) -> None:
        self.key, self.cert = key_pem or key_pair()
        self.entity_id, self.acs, self.sls = entity_id, acs, sls
        self.signature_algorithm = signature_algorithm
        self.digest_algorithm = C.SHA1 if signature_algorithm == C.RSA_SHA1 else C.SHA256
        idp = OneLogin_Saml2_IdPMetadataParser.parse(idp_metadata)["idp"]
        self.idp_certificate = idp["x509cert"]
        self.settings = OneLogin_Saml2_Settings({
            "strict": True,
            "sp": {"entityId": entity_id,
                   "assertionConsumerService": {"url": acs, "binding": C.BINDING_HTTP_POST},
                   "singleLogoutService": {"url": sls, "binding": C.BINDING_HTTP_REDIRECT},
                   "NameIDFormat": name_id_format, "x509cert": self.cert, "privateKey": self.key},
            "idp": idp,
            "security": {"authnRequestsSigned": sign_requests, "logoutRequestSigned": sign_requests,
                         "logoutResponseSigned": sign_requests, "wantAssertionsSigned": True,
                         "wantMessagesSigned": want_messages_signed, "wantAssertionsEncrypted": want_encrypted,
                         "wantNameId": True, "requestedAuthnContext": False,
                         "signatureAlgorithm": signature_algorithm, "digestAlgorithm": self.digest_algorithm,
                         "rejectDeprecatedAlgorithm": signature_algorithm != C.RSA_SHA1},
        })

    def metadata(self) -> str:
        return self.settings.get_sp_metadata().decode()

    @staticmethod
    def request_data(url: str, *, get: dict[str, str] | None = None, post: dict[str, str] | None = None
                     ) -> dict[str, Any]:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        return {"https": "on" if https else "off", "http_host": parts.netloc, "script_name": parts.path,
                "get_data": get or {}, "post_data": post or {}}

    def login_url(self, relay_state: str | None = None, **options: Any) -> tuple[str, str]:
        """An AuthnRequest by the HTTP-Redirect binding (signed in the query when the SP signs):
        the URL to send the browser to, and the request's ID."""
        auth = OneLogin_Saml2_Auth(self.request_data(self.acs), self.settings)
        url = auth.login(return_to=relay_state, **options)
        return url, auth.get_last_request_id()

    def request_xml(self) -> tuple[str, str]:
        request = OneLogin_Saml2_Authn_Request(self.settings)
        return request.get_xml().decode() if isinstance(request.get_xml(), bytes) else request.get_xml(), \
            request.get_id()

    def sign(self, xml: str) -> str:
        signed = OneLogin_Saml2_Utils.add_sign(xml, self.key, self.cert, sign_algorithm=self.signature_algorithm,
                                               digest_algorithm=self.digest_algorithm)
        return signed.decode() if isinstance(signed, bytes) else signed

    def login_form(self, relay_state: str | None = None, *, sign: bool = True) -> tuple[dict[str, str], str]:
        """An AuthnRequest by the HTTP-POST binding (an enveloped signature when ``sign``)."""
        xml, request_id = self.request_xml()
        if sign:
            xml = self.sign(xml)
        fields = {"SAMLRequest": base64.b64encode(xml.encode()).decode()}
        if relay_state:
            fields["RelayState"] = relay_state
        return fields, request_id

    def accept(self, fields: dict[str, str], request_id: str | None) -> OneLogin_Saml2_Auth:
        """The SP reading a Response posted to its ACS; look at ``get_errors()``, ``is_authenticated()``."""
        auth = OneLogin_Saml2_Auth(self.request_data(self.acs, post=fields), self.settings)
        auth.process_response(request_id=request_id)
        return auth

    def logout_url(self, name_id: str, name_id_format: str, relay_state: str | None = None) -> tuple[str, str]:
        auth = OneLogin_Saml2_Auth(self.request_data(self.sls), self.settings)
        url = auth.logout(return_to=relay_state, name_id=name_id, name_id_format=name_id_format,
                          spnq=self.entity_id if name_id_format == C.NAMEID_PERSISTENT else None)
        return url, auth.get_last_request_id()

    def accept_logout_redirect(self, url: str, request_id: str) -> list[str]:
        """Errors the SP finds in a LogoutResponse by the Redirect binding (none: accepted)."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        auth = OneLogin_Saml2_Auth(self.request_data(self.sls, get=query), self.settings)
        auth.process_slo(request_id=request_id, keep_local_session=True)
        return list(auth.get_errors()) + ([auth.get_last_error_reason()] if auth.get_last_error_reason() else [])

    def accept_logout_post(self, fields: dict[str, str], request_id: str) -> list[str]:
        """Errors in a LogoutResponse by the POST binding (python3-saml reads only Redirect ones
        itself: the enveloped signature is checked here with its utilities)."""
        xml = base64.b64decode(fields["SAMLResponse"])
        errors = []
        if not OneLogin_Saml2_Utils.validate_sign(xml, cert=OneLogin_Saml2_Utils.format_cert(self.idp_certificate),
                                           xpath="/samlp:LogoutResponse/ds:Signature"):
            errors.append("signature")
        response = OneLogin_Saml2_Logout_Response(self.settings, fields["SAMLResponse"])
        if not response.is_valid(self.request_data(self.sls, post=fields), request_id):
            errors.append(str(response.get_error()))
        if response.get_status() != C.STATUS_SUCCESS:
            errors.append(f"status {response.get_status()}")
        return errors
