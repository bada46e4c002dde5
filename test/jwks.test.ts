// Tokens signed by an identity provider and verified against its JWKS (the get-jwks pattern of Auth0, Cognito,
// Keycloak): @fastify/jwt with an async secret callback, registered by the app or by forge-socket.
import { generateKeyPairSync } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { once } from 'node:events'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyJwt, { type TokenOrHeader } from '@fastify/jwt'
import { createSigner } from 'fast-jwt'
import buildGetJwks from 'get-jwks'
import forgeSocket, { errors, type ForgeSocketOptions } from '../plugin.js'
import { listen, connect, refused, SECRET } from './helpers/server.js'

const seconds = (): number => Math.floor(Date.now() / 1000)

function keyPair (): { privateKey: string, publicKey: string, jwk: Record<string, unknown> } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return {
    privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    jwk: publicKey.export({ format: 'jwk' }) as Record<string, unknown>
  }
}

const signing = keyPair()
const stranger = keyPair()
const KID = 'key-1'

/** Serves `{ keys }` at /.well-known/jwks.json on a free port; resolves with the issuer URL (trailing slash). */
async function jwksServer (t: Test, keys: Array<Record<string, unknown>>): Promise<{ issuer: string, server: Server, fetches: () => number }> {
  let fetches = 0
  const server = createServer((request, response) => {
    response.setHeader('content-type', 'application/json')
    if (request.url !== '/.well-known/jwks.json') {
      response.statusCode = 404
      response.end('{}')
      return
    }
    fetches++
    response.end(JSON.stringify({ keys }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(async () => {
    // fetch keeps its connection alive: close it, or close() would wait for it.
    server.closeAllConnections()
    server.close()
  })
  const { port } = server.address() as { port: number }
  return { issuer: `http://127.0.0.1:${port}/`, server, fetches: () => fetches }
}

/** An issuer URL nobody listens on. */
async function deadIssuer (): Promise<string> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return `http://127.0.0.1:${port}/`
}

/** An RS256 token; `kid: null` leaves the header without one. */
function rs256 (claims: Record<string, unknown>, options: { key?: string, kid?: string | null } = {}): string {
  const kid = options.kid === null ? {} : { kid: options.kid ?? KID }
  return createSigner({ key: options.key ?? signing.privateKey, algorithm: 'RS256', ...kid })(claims)
}

/**
 * The usual secret callback: the key the token's header names, from its issuer's key set. (Without `alg`, so the
 * key set does not refuse a token of another algorithm before the allow-list can.)
 */
function jwksSecret (issuers: string[]): (request: unknown, token: TokenOrHeader) => Promise<string> {
  const getJwks = buildGetJwks({ providerDiscovery: false, issuersWhitelist: issuers })
  return async (_request, token) => {
    const { header, payload } = token as { header: { kid?: string }, payload: { iss?: string } }
    return await getJwks.getPublicKey({ kid: header.kid, domain: payload.iss })
  }
}

/** The secret callback of docs/server.md: a token without `kid` or `iss` is refused (401) before any fetch. */
function checkedJwksSecret (issuers: string[]): (request: unknown, token: TokenOrHeader) => Promise<string> {
  const getJwks = buildGetJwks({ providerDiscovery: false, issuersWhitelist: issuers })
  return async (_request, token) => {
    const { header, payload } = token as { header: { kid?: unknown }, payload: { iss?: unknown } }
    if (typeof header.kid !== 'string' || typeof payload.iss !== 'string') throw new errors.FST_SOCKET_TOKEN_INVALID('no kid or iss')
    return await getJwks.getPublicKey({ kid: header.kid, domain: payload.iss })
  }
}

const bearer = (token: string): { headers: { authorization: string } } => ({ headers: { authorization: `Bearer ${token}` } })

async function start (t: Test, register: (app: FastifyInstance) => Promise<void>): Promise<{ app: FastifyInstance, base: string }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await register(app)
  app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade(`user-${ps.profile.id}`, { profile: ps.profile })))
  return { app, base: await listen(app) }
}

const rsOnly: ForgeSocketOptions['auth'] = { algorithms: ['RS256'] }

t.test('an app that registered @fastify/jwt with get-jwks', async (t) => {
  const { issuer, fetches } = await jwksServer(t, [{ ...signing.jwk, kid: KID, alg: 'RS256', use: 'sig' }])
  const rogue = await jwksServer(t, [{ ...stranger.jwk, kid: KID }])
  const dead = await deadIssuer()
  const empty = await jwksServer(t, [])
  const { app, base } = await start(t, async (app) => {
    await app.register(fastifyJwt, { decode: { complete: true }, secret: jwksSecret([issuer, dead, empty.issuer]) })
    await app.register(forgeSocket, { auth: rsOnly })
  })
  const url = `${base}/ws/me`

  t.test('a token signed with the key connects; its profile is from sub', async (t) => {
    const { client, connected } = await connect(url, rs256({ sub: 'ann', iss: issuer, role: 'admin' }))
    t.equal(connected.param && (connected.param as { channels: string[] }).channels[0], 'user-ann')
    t.match(app.socket.connections()[0]?.metadata, { profile: { id: 'ann', sub: 'ann', role: 'admin' } })
    client.close()
    await client.closed
  })

  t.test('refusals: 401 with forge-socket\'s codes', async (t) => {
    const cases: Array<[string, string, string, RegExp]> = [
      ['unknown kid', rs256({ sub: 'ann', iss: issuer }, { kid: 'key-2' }), 'FST_SOCKET_TOKEN_INVALID', /unknown signing key/],
      ['wrong signature', rs256({ sub: 'ann', iss: issuer }, { key: stranger.privateKey }), 'FST_SOCKET_TOKEN_INVALID', /verification failed/],
      ['an issuer not allowed, with a key set of its own', rs256({ sub: 'ann', iss: rogue.issuer }, { key: stranger.privateKey }), 'FST_SOCKET_TOKEN_INVALID', /issuer not allowed/],
      ['expired', rs256({ sub: 'ann', iss: issuer, exp: seconds() - 60 }), 'FST_SOCKET_TOKEN_EXPIRED', /expired/],
      // The classic confusion: HS256 "signed" with the public key as its secret. The allow-list refuses it.
      ['alg not allowed', createSigner({ key: signing.publicKey, algorithm: 'HS256', kid: KID })({ sub: 'ann', iss: issuer }), 'FST_SOCKET_TOKEN_INVALID', /algorithm not allowed/],
      // get-jwks throws a TypeError for it: a forged token must not get a 503 (a client backs off for good).
      ['a forged token without iss', rs256({ sub: 'ann' }, { key: stranger.privateKey }), 'FST_SOCKET_TOKEN_INVALID', /verification failed/]
    ]
    for (const [name, token, code, message] of cases) {
      const result = await refused(url, bearer(token))
      t.equal(result.status, 401, `${name}: 401`)
      t.equal(result.body.code, code, `${name}: ${code}`)
      t.match(result.body.message, message, `${name}: reason`)
    }
    t.equal(fetches() >= 1, true, 'the key set was fetched')
    t.equal(rogue.fetches(), 0, 'the other one never was')
  })

  t.test('a key set that cannot be fetched is no verdict on the token: 503', async (t) => {
    const result = await refused(url, bearer(rs256({ sub: 'ann', iss: dead })))
    t.equal(result.status, 503, 'nobody listens (fetch failed: ECONNREFUSED)')
    t.equal(result.body.code, 'FST_SOCKET_AUTH_UNAVAILABLE')
    const none = await refused(url, bearer(rs256({ sub: 'ann', iss: empty.issuer })))
    t.equal(none.status, 503, 'a key set without keys (get-jwks NO_JWKS)')
    t.equal(none.body.code, 'FST_SOCKET_AUTH_UNAVAILABLE')
  })

  t.test('every unknown kid fetches the key set again (get-jwks does not cache failures)', async (t) => {
    const before = fetches()
    for (const kid of ['key-7', 'key-7', 'key-8']) {
      const result = await refused(url, bearer(rs256({ sub: 'ann', iss: issuer }, { kid })))
      t.equal(result.body.code, 'FST_SOCKET_TOKEN_INVALID', `${kid}: refused`)
    }
    t.equal(fetches() - before, 3, 'one fetch each')
  })

  t.test('auth.refresh with a JWKS-verified token', async (t) => {
    const { client } = await connect(url, rs256({ sub: 'ann', iss: issuer, exp: seconds() + 60 }))
    const later = seconds() + 3600
    const reply = await client.request('user-ann', 'auth.refresh', { token: rs256({ sub: 'ann', iss: issuer, exp: later }) })
    t.same(reply.param, { exp: later }, 'refreshed')

    const down = await client.request('user-ann', 'auth.refresh', { token: rs256({ sub: 'ann', iss: dead }) })
    t.match(down.param, { code: 'FST_SOCKET_HANDLER_FAILED' }, 'the key set is down: an error, not a verdict')
    const ping = await client.request('user-ann', 'ping', null)
    t.equal(ping.cmd, 'pong', 'the connection stays open')

    const unknown = await client.request('user-ann', 'auth.refresh', { token: rs256({ sub: 'ann', iss: issuer }, { kid: 'key-2' }) })
    t.match(unknown.param, { code: 'FST_SOCKET_TOKEN_INVALID' })
    t.same(await client.closed, { code: 4001, reason: 'refresh token refused' })
  })
})

t.test('forge-socket registers @fastify/jwt with a JWKS secret callback (the one docs/server.md shows)', async (t) => {
  const { issuer, fetches } = await jwksServer(t, [{ ...signing.jwk, kid: KID }])
  const { app, base } = await start(t, async (app) => {
    await app.register(forgeSocket, { jwt: { secret: checkedJwksSecret([issuer]), decode: { complete: true } }, auth: rsOnly })
  })
  const { client } = await connect(`${base}/ws/me`, rs256({ sub: 'ann', iss: issuer }))
  t.equal(app.socket.connections()[0]?.profileId, 'ann')
  const reply = await client.request('user-ann', 'auth.refresh', { token: rs256({ sub: 'ann', iss: issuer }) })
  t.same(reply.param, { exp: null }, 'refreshed in band through the same callback')
  client.close()
  await client.closed
  const unknown = await refused(`${base}/ws/me`, bearer(rs256({ sub: 'ann', iss: issuer }, { kid: 'key-2' })))
  t.equal(unknown.body.code, 'FST_SOCKET_TOKEN_INVALID')
  const before = fetches()
  for (const [name, token] of [['no iss', rs256({ sub: 'ann' })], ['no kid', rs256({ sub: 'ann', iss: issuer }, { kid: null })]]) {
    const result = await refused(`${base}/ws/me`, bearer(token as string))
    t.equal(result.status, 401, `${name as string}: 401`)
    t.match(result.body, { code: 'FST_SOCKET_TOKEN_INVALID', message: /no kid or iss/ }, `${name as string}: the callback's own coded error`)
  }
  t.equal(fetches(), before, 'and nothing was fetched for them')
})

t.test('over connectionLimits.perIp, an upgrade is refused before its token is verified (no key set fetch)', async (t) => {
  const { issuer, fetches } = await jwksServer(t, [{ ...signing.jwk, kid: KID }])
  const { base } = await start(t, async (app) => {
    await app.register(forgeSocket, { jwt: { secret: jwksSecret([issuer]), decode: { complete: true } }, auth: rsOnly, connectionLimits: { perIp: 1 } })
  })
  const { client } = await connect(`${base}/ws/me`, rs256({ sub: 'ann', iss: issuer }))
  const before = fetches()
  const over = await refused(`${base}/ws/me`, bearer(rs256({ sub: 'bob', iss: issuer }, { kid: 'key-9' })))
  t.equal(over.status, 429)
  t.equal(over.body.code, 'FST_SOCKET_TOO_MANY_CONNECTIONS')
  t.equal(fetches(), before, 'its unknown kid fetched nothing')
  client.close()
  await client.closed
})

t.test('forge-socket registers @fastify/jwt with a PEM key pair, and signs with it', async (t) => {
  const { app, base } = await start(t, async (app) => {
    await app.register(forgeSocket, {
      jwt: { secret: { public: signing.publicKey, private: signing.privateKey }, sign: { algorithm: 'RS256' } },
      auth: rsOnly
    })
  })
  const { client } = await connect(`${base}/ws/me`, app.jwt.sign({ sub: 'ann' }))
  t.equal(app.socket.connections()[0]?.profileId, 'ann')
  client.close()
  await client.closed
  const hs256 = await refused(`${base}/ws/me`, bearer(createSigner({ key: SECRET })({ sub: 'ann' })))
  t.equal(hs256.body.code, 'FST_SOCKET_TOKEN_INVALID')
})

t.test('a public key alone verifies (no signing)', async (t) => {
  const { base } = await start(t, async (app) => {
    await app.register(forgeSocket, { jwt: { secret: { public: Buffer.from(signing.publicKey) } }, auth: rsOnly })
  })
  const { client } = await connect(`${base}/ws/me`, rs256({ sub: 'ann' }))
  client.close()
  t.equal((await client.closed).code, 1000)
})
