-- DPoP (RFC 9449): the thumbprint of the key a token is bound to.
ALTER TABLE oidc_tokens ADD COLUMN dpop_jkt text;
