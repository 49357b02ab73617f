// WebAuthn in the flow pages: register a credential, use one, or offer passkeys in the username field.
// The page gives the options as JSON (<script type="application/json" id=...>) and every message,
// translated, in data-msg-* attributes: this file holds no text shown to people.
//
// An element with data-webauthn="register|authenticate|login|conditional" inside a form, with
// data-options (the id of the JSON options) and data-field (the hidden input that carries the
// browser's answer, as JSON, to the server).
(function () {
  "use strict";

  function b64urlToBuffer(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    var padded = base64 + "===".slice((base64.length + 3) % 4);
    var binary = atob(padded);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function bufferToB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) { return Object.assign({}, d, { id: b64urlToBuffer(d.id) }); });
  }

  function creationOptions(json) {
    if (PublicKeyCredential.parseCreationOptionsFromJSON) return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    var o = Object.assign({}, json);
    o.challenge = b64urlToBuffer(json.challenge);
    o.user = Object.assign({}, json.user, { id: b64urlToBuffer(json.user.id) });
    o.excludeCredentials = descriptors(json.excludeCredentials);
    return o;
  }

  function requestOptions(json) {
    if (PublicKeyCredential.parseRequestOptionsFromJSON) return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    var o = Object.assign({}, json);
    o.challenge = b64urlToBuffer(json.challenge);
    o.allowCredentials = descriptors(json.allowCredentials);
    return o;
  }

  function toJSON(credential) {
    if (typeof credential.toJSON === "function") return credential.toJSON();
    var r = credential.response;
    var response = { clientDataJSON: bufferToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bufferToB64url(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = bufferToB64url(r.authenticatorData);
      response.signature = bufferToB64url(r.signature);
      if (r.userHandle) response.userHandle = bufferToB64url(r.userHandle);
    }
    return {
      id: credential.id, rawId: bufferToB64url(credential.rawId), type: credential.type, response: response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || null
    };
  }

  function setUp(element) {
    var form = element.closest("form");
    var mode = element.getAttribute("data-webauthn");
    var field = form.querySelector('input[name="' + element.getAttribute("data-field") + '"]');
    var errorBox = element.querySelector("[data-webauthn-error]");
    var json = JSON.parse(document.getElementById(element.getAttribute("data-options")).textContent);
    var trigger = element.querySelector("[data-webauthn-start]");

    function show(message) {
      if (!errorBox) return;
      errorBox.textContent = message;
      errorBox.hidden = false;
    }

    function finish(credential) {
      field.value = JSON.stringify(toJSON(credential));
      form.submit();
    }

    if (!window.PublicKeyCredential || !navigator.credentials) {
      if (mode !== "conditional") show(element.getAttribute("data-msg-unsupported"));
      return;
    }

    function run() {
      var call = mode === "register"
        ? navigator.credentials.create({ publicKey: creationOptions(json) })
        : navigator.credentials.get({ publicKey: requestOptions(json) });
      return call.then(finish, function () { show(element.getAttribute("data-msg-failed")); });
    }

    if (mode === "conditional") {
      // Passkeys offered in the username field's autofill, where the browser can (no message otherwise).
      if (!PublicKeyCredential.isConditionalMediationAvailable) return;
      PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
        if (!available) return;
        navigator.credentials.get({ publicKey: requestOptions(json), mediation: "conditional" })
          .then(finish, function () { /* dismissed or failed: the password form still works */ });
      });
      return;
    }
    if (trigger) {
      // A button beside other ways to answer (e.g. a code field): only it starts WebAuthn.
      trigger.hidden = false;
      trigger.addEventListener("click", function (event) { event.preventDefault(); run(); });
      return;
    }
    form.addEventListener("submit", function (event) {
      if (field.value) return;
      event.preventDefault();
      run();
    });
  }

  function start() {
    var elements = document.querySelectorAll("[data-webauthn]");
    for (var i = 0; i < elements.length; i++) setUp(elements[i]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
