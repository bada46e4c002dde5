// forge-socket verifies through @fastify/jwt's request method: its secret forms, `trusted`, `formatUser`,
// `decoratorName` and namespaces apply as on the app's own routes; and the `jwt` / `auth.namespace` options.
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import fastifyJwt from '@fastify/jwt'
import forgeSocket, { forbidden, type ForgeSocketOptions } from '../plugin.js'
import { resolveOptions } from '../lib/options.js'
import { VerifiedTokens } from '../lib/jwt.js'
import { SECRET, build, listen, sign, connect, refused } from './helpers/server.js'

const OTHER = 'another-secret-that-is-long-enough-for-hs256'
const seconds = (): number => Math.floor(Date.now() / 1000)
const bearer = (token: string): { headers: { authorization: string } } => ({ headers: { authorization: `Bearer ${token}` } })

/** forge-socket (registering @fastify/jwt itself with these options) and a route whose metadata is what it saw. */
async function start (t: Test, options: ForgeSocketOptions, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(options, async (app) => {
    await setup?.(app)
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me', { profile: ps.profile })))
  })
  t.after(() => app.close())
  return { app, base: await listen(app) }
}

/** A case's name, how its app registers @fastify/jwt, forge-socket's options, and the message refusing them. */
type RegisterCase = [string, (app: FastifyInstance) => Promise<void>, ForgeSocketOptions, RegExp]

/** Registering forge-socket after each case's own @fastify/jwt fails with FST_SOCKET_INVALID_OPTIONS. */
async function refusedAtRegister (t: Test, cases: RegisterCase[]): Promise<void> {
  for (const [name, setup, options, message] of cases) {
    const app = Fastify({ logger: false })
    t.after(() => app.close().catch(() => {}))
    await setup(app)
    await t.rejects(async () => { await app.register(forgeSocket, options) }, { code: 'FST_SOCKET_INVALID_OPTIONS', message }, name)
  }
}

/** A logger stream that keeps the parsed lines. */
function logLines (): { stream: Writable, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line.length > 0) lines.push(JSON.parse(line))
      callback()
    }
  })
  return { stream, lines }
}

t.test('jwt.secret: a string, a Buffer, or a key function (async, sync or with a callback)', async (t) => {
  const secrets: Array<[string, NonNullable<ForgeSocketOptions['jwt']>['secret']]> = [
    ['string', SECRET],
    ['Buffer', Buffer.from(SECRET)],
    ['async function', async () => SECRET],
    // @fastify/jwt alone would wait forever for this one.
    ['function returning the key', () => SECRET],
    ['function with a callback', (_request, _token, callback) => { callback(null, SECRET) }]
  ]
  for (const [name, secret] of secrets) {
    const { app, base } = await start(t, { jwt: { secret } })
    const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
    t.equal(app.socket.connections()[0]?.profileId, 'ann', name)
    const bad = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann' }, { key: OTHER })))
    t.equal(bad.body.code, 'FST_SOCKET_TOKEN_INVALID', `${name}: another key is refused`)
    client.close()
    await client.closed
  }
})

t.test('jwt.trusted: false refuses the token (401), at the upgrade and in band', async (t) => {
  const seen: Array<{ ip: string, headers: Record<string, unknown>, logs: boolean }> = []
  const trusted = async (request: FastifyRequest, claims: Record<string, unknown>): Promise<boolean> => {
    seen.push({ ip: request.ip, headers: { ...request.headers }, logs: typeof request.log.info === 'function' })
    switch (claims.mode) {
      case 'revoked': return false
      case 'broken': throw new Error('the denylist is down')
      case 'forbidden': throw forbidden('suspended')
      default: return true
    }
  }
  const { stream, lines } = logLines()
  const app = Fastify({ logger: { level: 'warn', stream } })
  t.after(() => app.close())
  await app.register(forgeSocket, { jwt: { secret: SECRET, trusted }, auth: { expiryGrace: 0 } })
  app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
  const url = `${await listen(app)}/ws/me`
  const revoked = await refused(url, bearer(sign({ sub: 'ann', mode: 'revoked' })))
  t.equal(revoked.status, 401)
  t.equal(revoked.body.code, 'FST_SOCKET_TOKEN_INVALID')
  t.match(revoked.body.message, /untrusted token/)
  const brokenToken = sign({ sub: 'ann', mode: 'broken' })
  const broken = await refused(url, bearer(brokenToken))
  t.equal(broken.status, 401, 'a trust check that throws a plain error refuses the token: no 503 for anyone to provoke')
  t.equal(broken.body.code, 'FST_SOCKET_TOKEN_INVALID')
  t.match(broken.body.message, /verification failed/)
  t.notMatch(broken.body.message, /denylist/, 'its message does not reach the client')
  const warned = lines.filter((line) => line.msg === 'token verification failed')
  t.equal(warned.length, 1, 'logged once')
  t.match(warned[0], { level: 40, err: { message: 'the denylist is down' } }, 'at warn, with the error')
  t.notOk(lines.some((line) => JSON.stringify(line).includes(brokenToken.split('.')[2] as string)), 'never with the token')
  const coded = await refused(url, bearer(sign({ sub: 'ann', mode: 'forbidden' })))
  t.equal(coded.status, 403, 'a coded 4xx error passes through')
  t.equal(coded.body.code, 'FST_SOCKET_FORBIDDEN')

  seen.length = 0
  const { client } = await connect(url, sign({ sub: 'ann' }))
  t.match(seen[0], { ip: '127.0.0.1', headers: { authorization: /^Bearer / }, logs: true }, 'the upgrade request')
  const reply = await client.request('me', 'auth.refresh', { token: sign({ sub: 'ann', exp: seconds() + 3600 }) })
  t.equal(reply.cmd, 'reply')
  t.same(seen[1], { ip: '127.0.0.1', headers: {}, logs: true }, 'in band: a stand-in with the connection\'s ip and logger, no headers')
  const refused2 = await client.request('me', 'auth.refresh', { token: sign({ sub: 'ann', mode: 'revoked' }) })
  t.match(refused2.param, { code: 'FST_SOCKET_TOKEN_INVALID' })
  t.same(await client.closed, { code: 4001, reason: 'refresh token refused' })

  const { client: again } = await connect(url, sign({ sub: 'ann' }))
  const brokenInBand = await again.request('me', 'auth.refresh', { token: sign({ sub: 'ann', mode: 'broken' }) })
  t.match(brokenInBand.param, { code: 'FST_SOCKET_TOKEN_INVALID' }, 'in band: a refusal too, not an error to retry')
  t.same(await again.closed, { code: 4001, reason: 'refresh token refused' })
  t.equal(lines.filter((line) => line.level === 50).length, 0, 'nothing logged at error')
})

t.test('only a key set that can\'t be had is 503: every other uncoded error from a callback is 401', async (t) => {
  const fetchFailed = (code: string): Error => new TypeError('fetch failed', { cause: Object.assign(new Error(`connect ${code}`), { code, syscall: 'connect' }) })
  const cases: Array<[string, unknown, number]> = [
    ['a plain Error', new Error('boom'), 401],
    ['a TypeError (get-jwks, for a token without iss)', new TypeError("Cannot read properties of undefined (reading 'length')"), 401],
    ['a thrown string', 'nope', 401],
    ['a system error that is no network failure', Object.assign(new Error('denied'), { code: 'EACCES' }), 401],
    ['a cause that is no network failure', new Error('wrapped', { cause: new Error('inner') }), 401],
    ['a cause that is not an object', new Error('wrapped', { cause: 'ECONNREFUSED' }), 401],
    ['a null cause', new Error('wrapped', { cause: null }), 401],
    ['get-jwks JWKS_REQUEST_FAILED', Object.assign(new Error('JWKS request failed'), { code: 'JWKS_REQUEST_FAILED' }), 503],
    ['get-jwks OPENID_CONFIGURATION_REQUEST_FAILED', Object.assign(new Error('OpenID configuration request failed'), { code: 'OPENID_CONFIGURATION_REQUEST_FAILED' }), 503],
    ['get-jwks NO_JWKS', Object.assign(new Error('No JWKS found in the response.'), { code: 'NO_JWKS' }), 503],
    ['get-jwks NO_JWKS_URI', Object.assign(new Error('No valid jwks_uri'), { code: 'NO_JWKS_URI' }), 503],
    ['fetch: ECONNREFUSED', fetchFailed('ECONNREFUSED'), 503],
    ['fetch: ECONNRESET', fetchFailed('ECONNRESET'), 503],
    ['fetch: ETIMEDOUT', fetchFailed('ETIMEDOUT'), 503],
    ['fetch: ENOTFOUND', fetchFailed('ENOTFOUND'), 503],
    ['fetch: undici connect timeout', fetchFailed('UND_ERR_CONNECT_TIMEOUT'), 503],
    ['a system error itself', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), 503],
    ['fetch aborted', new DOMException('This operation was aborted', 'AbortError'), 503],
    ['fetch timed out', new DOMException('The operation was aborted due to timeout', 'TimeoutError'), 503]
  ]
  const thrown = new Map(cases.map(([name, err]) => [name, err]))
  const trusted = async (_request: FastifyRequest, claims: Record<string, unknown>): Promise<boolean> => {
    throw thrown.get(claims.mode as string)
  }
  const { base } = await start(t, { jwt: { secret: SECRET, trusted } })
  for (const [name, , status] of cases) {
    const result = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', mode: name })))
    t.equal(result.status, status, `${name}: ${status}`)
    t.equal(result.body.code, status === 503 ? 'FST_SOCKET_AUTH_UNAVAILABLE' : 'FST_SOCKET_TOKEN_INVALID', `${name}: its code`)
  }
})

t.test('trusted of an app\'s own @fastify/jwt applies too', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyJwt, { secret: SECRET, trusted: (_request, claims) => claims.sub !== 'mallory' })
  await app.register(forgeSocket)
  app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
  client.close()
  await client.closed
  const untrusted = await refused(`${base}/ws/me`, bearer(sign({ sub: 'mallory' })))
  t.equal(untrusted.status, 401)
  t.equal(untrusted.body.code, 'FST_SOCKET_TOKEN_INVALID')
})

t.test('formatUser and decoratorName: the act handler sees request[decoratorName]; the profile and exp come from the claims', async (t) => {
  for (const owner of ['forge-socket', 'the app'] as const) {
    const jwtOptions = { secret: SECRET, decoratorName: 'identity', formatUser: (claims: string | object | Buffer) => ({ login: (claims as { sub: string }).sub.toUpperCase() }) }
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    if (owner === 'the app') await app.register(fastifyJwt, jwtOptions)
    await app.register(forgeSocket, { ...(owner === 'forge-socket' ? { jwt: jwtOptions } : {}), auth: { expiryGrace: 0 } })
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me', {
      identity: (ps.request as unknown as Record<string, unknown>).identity as string,
      profile: ps.profile
    })))
    const base = await listen(app)
    const exp = seconds() + 2
    const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann', exp }))
    t.match(app.socket.connections()[0]?.metadata, { identity: { login: 'ANN' }, profile: { sub: 'ann', exp, id: 'ann' } }, `${owner}: what the handler saw`)
    t.same(await client.closed, { code: 4001, reason: 'token expired' }, `${owner}: closed at exp`)
  }
})

t.test('jwt.verify options reach the verifier; complete: true still gives the claims', async (t) => {
  const { app, base } = await start(t, { jwt: { secret: SECRET, verify: { allowedIss: 'https://issuer.example', complete: true } } })
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann', iss: 'https://issuer.example' }))
  t.equal(app.socket.connections()[0]?.profileId, 'ann')
  client.close()
  await client.closed
  const other = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', iss: 'https://elsewhere.example' })))
  t.equal(other.status, 401)
  t.equal(other.body.code, 'FST_SOCKET_TOKEN_INVALID')
})

t.test('the app\'s own routes still verify with request.jwtVerify() as @fastify/jwt does', async (t) => {
  const { app, base } = await start(t, { jwt: { secret: SECRET } }, (app) => {
    app.get('/api/me', { onRequest: async (request) => { await request.jwtVerify() } }, async (request) => request.user)
  })
  const ok = await app.inject({ url: '/api/me', ...bearer(sign({ sub: 'ann' })) })
  t.equal(ok.statusCode, 200)
  t.match(ok.json(), { sub: 'ann' })
  const none = await app.inject({ url: '/api/me' })
  t.equal(none.statusCode, 401)
  t.equal(none.json().code, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER', '@fastify/jwt\'s own answer')
  const hs512 = await app.inject({ url: '/api/me', ...bearer(sign({ sub: 'ann' }, { algorithm: 'HS512' })) })
  t.not(hs512.statusCode, 200, 'the allow-list applies there too')

  // After a handshake verified forge-socket's token, nothing of it is left for the next lookup.
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
  const after = await app.inject({ url: '/api/me' })
  t.equal(after.json().code, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER', 'no token left over from the handshake')
  client.close()
  await client.closed
})

t.test('a @fastify/jwt whose lookupToken skipped a null extractToken would re-enter ours: 400, not a stack overflow', async (t) => {
  const { app } = await start(t, { jwt: { secret: SECRET } }, (app) => {
    app.get('/api/me', { onRequest: async (request) => { await request.jwtVerify() } }, async (request) => request.user)
  })
  // What @fastify/jwt would do if its mergeDefinedOptions skipped null as it skips undefined.
  const lookupToken = app.jwt.lookupToken.bind(app.jwt)
  app.jwt.lookupToken = (request, options) => lookupToken(request, { ...options, extractToken: undefined })
  const reentered = await app.inject({ url: '/api/me', ...bearer(sign({ sub: 'ann' })) })
  t.equal(reentered.statusCode, 400)
  t.equal(reentered.json().code, 'FST_JWT_BAD_REQUEST', '@fastify/jwt\'s own refusal')
})

t.test('auth.namespace: verify with one @fastify/jwt namespace', async (t) => {
  t.test('the app\'s namespace', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(fastifyJwt, { secret: OTHER })
    await app.register(fastifyJwt, { secret: SECRET, namespace: 'socket' })
    await app.register(fastifyJwt, { secret: OTHER, namespace: 'admin', jwtVerify: 'adminVerify' })
    await app.register(forgeSocket, { auth: { namespace: 'socket' } })
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
    const base = await listen(app)
    const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
    t.equal(app.socket.connections()[0]?.profileId, 'ann')
    client.close()
    await client.closed
    const other = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann' }, { key: OTHER })))
    t.equal(other.body.code, 'FST_SOCKET_TOKEN_INVALID', 'the default instance\'s secret is not the namespace\'s')
  })

  t.test('auth.jwtVerify is gone: no request method but @fastify/jwt\'s own verify can be named (jwtDecode let forged tokens in)', async (t) => {
    await refusedAtRegister(t, [['jwtVerify: \'jwtDecode\'', async (app) => { await app.register(fastifyJwt, { secret: SECRET }) },
      { auth: { jwtVerify: 'jwtDecode' } } as unknown as ForgeSocketOptions, /\/auth\/jwtVerify/]])
    await t.rejects(resolveOptionsAsync({ jwt: { secret: SECRET, jwtVerify: 'verify' } }),
      { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/jwt\/jwtVerify is not passed to @fastify\/jwt: forge-socket verifies only with the method @fastify\/jwt names/ })
  })

  t.test('forge-socket registers the namespace', async (t) => {
    const { app, base } = await start(t, { jwt: { secret: SECRET }, auth: { namespace: 'ws' } }, (app) => {
      app.get('/api/me', async (request) => await (request as unknown as { wsJwtVerify: () => Promise<unknown> }).wsJwtVerify())
    })
    t.ok(app.hasRequestDecorator('wsJwtVerify'))
    const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
    client.close()
    await client.closed
    const http = await app.inject({ url: '/api/me', ...bearer(sign({ sub: 'bob' })) })
    t.match(http.json(), { sub: 'bob' }, 'the app\'s routes find the Bearer token through the namespace')
  })

  t.test('checked at register', async (t) => {
    const cases: RegisterCase[] = [
      ['an unknown namespace, nothing to register it with', async (app) => { await app.register(fastifyJwt, { secret: SECRET }) }, { auth: { namespace: 'nope' } }, /\/auth\/namespace "nope" is not a registered @fastify\/jwt namespace/],
      ['namespaces only, none named', async (app) => { await app.register(fastifyJwt, { secret: SECRET, namespace: 'socket' }) }, {}, /\/auth\/namespace: @fastify\/jwt gave requests no jwtVerify\(\) \(it has only namespaces/],
      ['a namespace whose verify method was renamed', async (app) => { await app.register(fastifyJwt, { secret: SECRET, namespace: 'admin', jwtVerify: 'adminVerify' }) }, { auth: { namespace: 'admin' } }, /\/auth\/namespace: the @fastify\/jwt namespace "admin" gave requests no adminJwtVerify\(\)\. A verify method renamed with @fastify\/jwt's jwtVerify option is not supported: forge-socket calls only the name @fastify\/jwt gives/]
    ]
    await refusedAtRegister(t, cases)
    await t.rejects(resolveOptionsAsync({ auth: { namespace: '' } }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/auth\/namespace/ }, 'an empty name')
  })
})

t.test('jwt beside an app\'s own @fastify/jwt is refused at register: its options would not apply (a token for another aud connected)', async (t) => {
  const cases: RegisterCase[] = [
    ['the default instance', async (app) => { await app.register(fastifyJwt, { secret: SECRET }) }, { jwt: { secret: SECRET, verify: { allowedAud: 'ws-api' } } },
      /\/jwt is given but @fastify\/jwt is already registered: configure that instance, or use \/auth\/namespace to name a namespace forge-socket registers with \/jwt/],
    ['the namespace named', async (app) => { await app.register(fastifyJwt, { secret: SECRET, namespace: 'socket' }) }, { jwt: { secret: SECRET }, auth: { namespace: 'socket' } },
      /\/jwt is given but @fastify\/jwt \(namespace "socket"\) is already registered/],
    ['namespaces only, none named', async (app) => { await app.register(fastifyJwt, { secret: SECRET, namespace: 'socket' }) }, { jwt: { secret: SECRET } },
      /\/jwt is given but @fastify\/jwt is already registered/]
  ]
  await refusedAtRegister(t, cases)

  // Beside the app's default instance, jwt with a namespace of its own is what forge-socket registers and verifies with.
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyJwt, { secret: OTHER })
  await app.register(forgeSocket, { jwt: { secret: SECRET, verify: { allowedAud: 'ws-api' } }, auth: { namespace: 'ws' } })
  app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann', aud: 'ws-api' }))
  client.close()
  await client.closed
  const other = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', aud: 'another-api' })))
  t.equal(other.status, 401, 'its verify options apply')
  t.equal(other.body.code, 'FST_SOCKET_TOKEN_INVALID')
})

async function resolveOptionsAsync (options: unknown): Promise<unknown> {
  return resolveOptions(options as ForgeSocketOptions)
}

t.test('the jwt option is checked at register', async (t) => {
  const fn = (): string => SECRET
  const cases: Array<[string, unknown, RegExp]> = [
    ['not an object', 'secret', /\/jwt must be an object/],
    ['no secret', {}, /\/jwt\/secret must be a non-empty string or Buffer/],
    ['empty Buffer', { secret: Buffer.alloc(0) }, /\/jwt\/secret must be/],
    ['a number', { secret: 42 }, /\/jwt\/secret must be/],
    ['no public key', { secret: { private: 'x' } }, /\/jwt\/secret\/public must be/],
    ['a bad private key', { secret: { public: 'x', private: 7 } }, /\/jwt\/secret\/private must be/],
    ['an unknown key', { secret: SECRET, secrte: 1 }, /\/jwt\/secrte is not passed to @fastify\/jwt$/],
    ['a namespace here', { secret: SECRET, namespace: 'x' }, /\/jwt\/namespace is not passed to @fastify\/jwt: use \/auth\/namespace/],
    ['a cookie here', { secret: SECRET, cookie: { cookieName: 'token' } }, /use \/auth\/cookie/],
    ['sign not an object', { secret: SECRET, sign: 'RS256' }, /\/jwt\/sign must be an object/],
    ['verify.algorithms', { secret: SECRET, verify: { algorithms: ['HS256'] } }, /\/jwt\/verify\/algorithms is forge-socket's: use \/auth\/algorithms/],
    ['verify.extractToken', { secret: SECRET, verify: { extractToken: fn } }, /\/jwt\/verify\/extractToken is forge-socket's/],
    ['trusted not a function', { secret: SECRET, trusted: true }, /\/jwt\/trusted must be a function/],
    ['formatUser not a function', { secret: SECRET, formatUser: 'user' }, /\/jwt\/formatUser must be a function/],
    ['empty decoratorName', { secret: SECRET, decoratorName: '' }, /\/jwt\/decoratorName must be a non-empty string/],
    ['decoratorName not a string', { secret: SECRET, decoratorName: 1 }, /\/jwt\/decoratorName/]
  ]
  for (const [name, jwt, message] of cases) {
    await t.rejects(resolveOptionsAsync({ jwt }), { code: 'FST_SOCKET_INVALID_OPTIONS', message }, name)
  }

  const jwt = { secret: { public: fn, private: { key: 'pem', passphrase: 'pw' } }, verify: { allowedIss: /example/ } }
  const options = resolveOptions({ jwt } as unknown as ForgeSocketOptions)
  t.equal(options.jwt?.secret, jwt.secret, 'key functions and { key, passphrase } are taken as they are')
  t.ok(Object.isFrozen(options.jwt), 'frozen')
  t.not(options.jwt, jwt, 'a copy')

  // What @fastify/jwt itself refuses when it is registered names /jwt too.
  await t.rejects(build({ jwt: { secret: SECRET, sign: { algorithm: 'RS256' } } }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /^Invalid forge-socket options: \/jwt: RSA Signatures/ })
})

t.test('the direct verifier (own registration, fixed key, no trusted) keeps verified tokens by their text, never past exp or maxAge', async (t) => {
  async function serve (options: ForgeSocketOptions): Promise<{ url: string, claims: unknown[], users: unknown[] }> {
    const claims: unknown[] = []
    const users: unknown[] = []
    const app = await build(options, (app) => {
      app.get('/ws/me', app.socket.act('me', (app, ps) => {
        claims.push(ps.claims)
        users.push((ps.request as unknown as { user: unknown }).user)
        return ps.upgrade('me')
      }))
    })
    t.after(() => app.close())
    return { url: `${await listen(app)}/ws/me`, claims, users }
  }
  async function open (url: string, token: string): Promise<void> {
    const { client } = await connect(url, token)
    client.close()
    await client.closed
  }
  const token = sign({ sub: 'ann' })
  const kept = await serve({ jwt: { secret: SECRET } })
  await open(kept.url, token)
  await open(kept.url, token)
  t.equal(kept.claims[0], kept.claims[1], 'the same token: the claims of its first verification')
  t.equal(kept.users[0], kept.users[1], 'request.user is what the verifier returned, each time')
  t.match(kept.claims[0], { sub: 'ann' })

  // Past a 2 KiB token, only fast-jwt's own cache keeps it: it is still accepted each time.
  const long = sign({ sub: 'ann', pad: 'x'.repeat(3000) })
  await open(kept.url, long)
  await open(kept.url, long)
  t.match(kept.claims[3], { sub: 'ann' }, 'a long token is accepted again')

  // With formatUser, the verifier's result is the user: the claims are read from the token once, and kept with it.
  const formatted = await serve({ jwt: { secret: SECRET, formatUser: (claims) => ({ name: (claims as { sub?: string }).sub }) } })
  await open(formatted.url, token)
  await open(formatted.url, token)
  t.equal(formatted.claims[0], formatted.claims[1], 'with formatUser, a kept token\'s claims are the ones read when it was verified')
  t.match(formatted.claims[1], { sub: 'ann' })
  t.same(formatted.users, [{ name: 'ann' }, { name: 'ann' }], 'and request.user goes through formatUser each time')

  const off = await serve({ jwt: { secret: SECRET, verify: { cache: false } } })
  await open(off.url, token)
  await open(off.url, token)
  t.not(off.claims[0], off.claims[1], 'jwt.verify.cache: false verifies every time')

  // maxAge (seconds, as @fastify/jwt takes it) bounds an entry by iat: once past, the token is verified again, and
  // refused. A string maxAge ('1h') leaves the keeping to fast-jwt's cache.
  const aged = await serve({ jwt: { secret: SECRET, verify: { maxAge: 1 } }, auth: { expiryGrace: 0 } })
  const iat = seconds()
  const young = sign({ sub: 'ann', iat })
  await open(aged.url, young)
  await new Promise((resolve) => setTimeout(resolve, iat * 1000 + 1000 - Date.now() + 50))
  const late = await refused(aged.url, bearer(young))
  t.equal(late.status, 401, 'a token past iat + maxAge is refused, though it was kept')
  t.equal(late.body.code, 'FST_SOCKET_TOKEN_EXPIRED')
  const worded = await serve({ jwt: { secret: SECRET, verify: { maxAge: '1h' } } })
  await open(worded.url, token)
  await open(worded.url, token)
  t.equal(worded.claims[0], worded.claims[1], 'with maxAge as a string, fast-jwt\'s cache keeps the token')
})

t.test('VerifiedTokens: an entry lasts until exp, iat + maxAge or the TTL, whichever is first; the oldest makes room', async (t) => {
  const now = 1_000_000_000_000
  const s = now / 1000
  const tokens = new VerifiedTokens(2, 600_000, undefined)
  tokens.set('a', 'A', { exp: s + 60 }, now)
  t.equal(tokens.get('a', now + 59_999)?.user, 'A', 'before exp')
  t.equal(tokens.get('a', now + 60_000)?.user, undefined, 'not at exp')
  tokens.set('b', 'B', {}, now)
  t.equal(tokens.get('b', now + 599_999)?.user, 'B', 'no exp: the TTL')
  t.equal(tokens.get('b', now + 600_000)?.user, undefined, 'and no longer')
  tokens.set('c', 'C', { exp: s - 1 }, now)
  t.equal(tokens.get('c', now)?.user, undefined, 'an expired token is not kept')
  tokens.set('d', 'D', {}, now)
  tokens.set('e', 'E', {}, now)
  tokens.set('f', 'F', {}, now)
  t.same([tokens.get('d', now)?.user, tokens.get('e', now)?.user, tokens.get('f', now)?.user], [undefined, 'E', 'F'], 'at its size, the oldest goes')
  tokens.set('x'.repeat(2049), 'L', {}, now)
  t.equal(tokens.get('x'.repeat(2049), now)?.user, undefined, 'a token over 2 KiB is not kept')
  const aged = new VerifiedTokens(10, 600_000, 5000)
  aged.set('g', 'G', { iat: s - 2, exp: s + 60 }, now)
  t.equal(aged.get('g', now + 2999)?.user, 'G')
  t.equal(aged.get('g', now + 3000)?.user, undefined, 'iat + maxAge comes first')
  aged.set('h', 'H', { exp: s + 60 }, now)
  t.equal(aged.get('h', now)?.user, undefined, 'with maxAge, a token without iat is not kept')
})

t.test('verified tokens are cached: a reconnection with the same token is not verified again, but trusted still runs and exp holds', async (t) => {
  /** Each connection's claims, as the act handler got them: a token served from the cache gives the same object. */
  async function claimsOf (options: ForgeSocketOptions, tokens: string[]): Promise<{ claims: unknown[], trusted: number }> {
    const claims: unknown[] = []
    let trusted = 0
    const app = await build({ ...options, jwt: { ...options.jwt as NonNullable<ForgeSocketOptions['jwt']>, trusted: () => { trusted++; return true } } }, (app) => {
      app.get('/ws/me', app.socket.act('me', (app, ps) => { claims.push(ps.claims); return ps.upgrade('me') }))
    })
    t.after(() => app.close())
    const base = await listen(app)
    for (const token of tokens) {
      const { client } = await connect(`${base}/ws/me`, token)
      client.close()
      await client.closed
    }
    return { claims, trusted }
  }
  const token = sign({ sub: 'ann' })
  const cached = await claimsOf({ jwt: { secret: SECRET } }, [token, token, sign({ sub: 'bob' })])
  t.equal(cached.claims[0], cached.claims[1], 'the same token: the claims the first verification made (no second one)')
  t.not(cached.claims[2], cached.claims[0], 'another token is verified')
  t.match(cached.claims[2], { sub: 'bob' })
  t.equal(cached.trusted, 3, 'jwt.trusted runs on every connection, cached or not (a revocation list still applies)')

  const off = await claimsOf({ jwt: { secret: SECRET, verify: { cache: false } } }, [token, token])
  t.not(off.claims[0], off.claims[1], 'jwt.verify.cache: false verifies every time')
  t.same(off.claims[0], off.claims[1])

  const keyFunction = await claimsOf({ jwt: { secret: async () => SECRET } }, [token, token])
  t.not(keyFunction.claims[0], keyFunction.claims[1], 'with a key function nothing is cached by default (a JWKS key may be dropped)')

  // The cache keeps a token no longer than its exp: one that has expired since is refused.
  const app = await build({ jwt: { secret: SECRET }, auth: { expiryGrace: 0 } }, (app) => {
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
  })
  t.after(() => app.close())
  const url = `${await listen(app)}/ws/me`
  const exp = seconds() + 1
  const short = sign({ sub: 'ann', exp })
  const { client } = await connect(url, short)
  client.close()
  await client.closed
  // Until the second after exp has begun (fast-jwt compares in ms against exp × 1000).
  await new Promise((resolve) => setTimeout(resolve, exp * 1000 - Date.now() + 50))
  const late = await refused(url, bearer(short))
  t.equal(late.status, 401, 'an expired token is refused, though it was cached')
  t.equal(late.body.code, 'FST_SOCKET_TOKEN_EXPIRED')
})
