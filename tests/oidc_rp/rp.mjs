// An independent relying party (panva's openid-client, not built on authlib) for tests/test_oidc_rp.py.
// Phase "start": discovery, PKCE and nonce; prints {url, verifier, state, nonce}.
// Phase "finish": exchanges the code from the callback URL (checking iss, state, PKCE, nonce and the ID
// token's signature against JWKS), refreshes, reads userinfo, introspects; prints what it saw.
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'

// The package lives outside the repository (KEYSTAGE_TEST_OPENID_CLIENT): resolve it from there.
const require = createRequire(process.env.OPENID_CLIENT_DIR + '/')
const client = await import(pathToFileURL(require.resolve('openid-client')).href)

const [phase, issuer, clientId, secret, redirectUri, ...rest] = process.argv.slice(2)
const options = issuer.startsWith('http://') ? { execute: [client.allowInsecureRequests] } : undefined
const config = await client.discovery(new URL(issuer), clientId, secret, undefined, options)

if (phase === 'start') {
  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const parameters = {
    redirect_uri: redirectUri, scope: 'openid profile email groups offline_access', state, nonce,
    code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
  }
  // RP_PAR=1: push the request first (RFC 9126) and send only client_id + request_uri.
  const url = process.env.RP_PAR === '1'
    ? await client.buildAuthorizationUrlWithPAR(config, parameters)
    : client.buildAuthorizationUrl(config, parameters)
  console.log(JSON.stringify({ url: url.href, verifier, state, nonce }))
} else {
  const [callback, verifier, state, nonce] = rest
  // RP_DPOP=1: bind the tokens to a key of ours (RFC 9449) and prove it at every call.
  const DPoP = process.env.RP_DPOP === '1' ? client.getDPoPHandle(config, await client.randomDPoPKeyPair('ES256')) : undefined
  const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
    pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true,
  }, undefined, { DPoP })
  const claims = tokens.claims()
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP })
  const info = await client.fetchUserInfo(config, refreshed.access_token, claims.sub, { DPoP })
  const introspected = await client.tokenIntrospection(config, refreshed.access_token)
  let reuse = null
  try {
    await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP })
  } catch (error) {
    reuse = error.error || error.code || String(error)
  }
  console.log(JSON.stringify({ claims, userinfo: info, introspected, refreshedScope: refreshed.scope, reuse,
                               tokenType: tokens.token_type }))
}
