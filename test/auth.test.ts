import { createHmac } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyJwt from '@fastify/jwt'
import fastifyCookie from '@fastify/cookie'
import forgeSocket, { SUBPROTOCOL, forbidden, type ForgeSocketOptions, type Profile } from '../plugin.js'
import { selectProtocol, stripQueryToken } from '../lib/auth.js'
import { SECRET, build, closes, idOf, listen, sign, connect, refused, Client } from './helpers/server.js'

function base64url (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** A token built by hand, for headers the signer will not produce (`alg: none`, an odd `typ`). */
function handmade (header: Record<string, unknown>, payload: Record<string, unknown>, key?: string): string {
  const input = `${base64url(header)}.${base64url(payload)}`
  const signature = key === undefined ? '' : createHmac('sha256', key).update(input).digest('base64url')
  return `${input}.${signature}`
}

// examples/app.ts merges fields into ForgeSocketProfile for the whole project; these tests build bare profiles.
function asProfile (value: object): Profile {
  return value as unknown as Profile
}

function nowSeconds (): number {
  return Math.floor(Date.now() / 1000)
}

const bearer = (token: string): { headers: { authorization: string } } => ({ headers: { authorization: `Bearer ${token}` } })

/** An app with one required-auth route (`/ws/me`) whose metadata echoes the profile, and an optional one. */
async function start (t: Test, options: ForgeSocketOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(options, async (app) => {
    await setup?.(app)
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me', { profile: ps.profile })))
    app.get('/ws/maybe', app.socket.act('maybe', (app, ps) => ps.upgrade('maybe', { profile: ps.profile, claims: ps.claims }), { auth: 'optional' }))
  })
  t.after(() => app.close())
  return { app, base: await listen(app) }
}

t.test('refusals before the upgrade', async (t) => {
  const { base } = await start(t)
  const url = `${base}/ws/me`
  const cases: Array<[string, string | undefined, number, string]> = [
    ['no token', undefined, 401, 'FST_SOCKET_TOKEN_MISSING'],
    ['bad signature', sign({ sub: 'ann' }, { key: 'another-secret-that-is-long-enough-too' }), 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['expired', sign({ sub: 'ann', exp: nowSeconds() - 60 }), 401, 'FST_SOCKET_TOKEN_EXPIRED'],
    ['alg none', handmade({ alg: 'none', typ: 'JWT' }, { sub: 'ann' }), 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['HS512 outside the default allow-list', sign({ sub: 'ann' }, { algorithm: 'HS512' }), 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['malformed', 'not-a-jwt', 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['garbage segments', 'aaa.bbb.ccc', 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['not active yet (nbf)', sign({ sub: 'ann', nbf: nowSeconds() + 3600 }), 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['no sub', sign({ name: 'ann' }), 401, 'FST_SOCKET_TOKEN_INVALID'],
    ['empty sub', sign({ sub: '' }), 401, 'FST_SOCKET_TOKEN_INVALID']
  ]
  for (const [name, token, status, code] of cases) {
    const result = await refused(url, token === undefined ? {} : bearer(token))
    t.equal(result.status, status, `${name}: status`)
    t.equal(result.body.code, code, `${name}: code`)
    t.equal(result.body.statusCode, status, `${name}: JSON error body`)
  }
  const expired = await refused(url, bearer(sign({ sub: 'ann', exp: nowSeconds() - 60 })))
  t.equal(expired.body.message, 'Authorization token expired')
  const none = await refused(url, bearer(handmade({ alg: 'none', typ: 'JWT' }, { sub: 'ann' })))
  t.notMatch(none.body.message, /eyJ/, 'the token is not echoed in the error')
  // A non-Bearer Authorization header is not a token.
  const basic = await refused(url, { headers: { authorization: 'Basic YW5uOnB3' } })
  t.equal(basic.body.code, 'FST_SOCKET_TOKEN_MISSING')
})

t.test('Authorization: Bearer is accepted and the default profile is the claims with id from sub', async (t) => {
  const { app, base } = await start(t)
  const { client, connected } = await connect(`${base}/ws/me`, sign({ sub: 'ann', role: 'admin' }))
  t.equal(connected.cmd, 'connected')
  const [info] = app.socket.connections()
  t.equal(info?.profileId, 'ann')
  t.match(info?.metadata, { profile: { id: 'ann', sub: 'ann', role: 'admin' } })
  // The scheme is case-insensitive.
  const lower = new Client(`${base}/ws/me`, { headers: { authorization: `bearer ${sign({ sub: 'bob' })}` } })
  t.equal((await lower.next('connected')).cmd, 'connected')
  lower.close()
  client.close()
  await Promise.all([client.closed, lower.closed])
})

t.test('Sec-WebSocket-Protocol: forge.v1, bearer.<jwt>', async (t) => {
  const { app, base } = await start(t)
  const token = sign({ sub: 'ann' })
  const client = new Client(`${base}/ws/me`, { protocols: [SUBPROTOCOL, `bearer.${token}`] })
  const answered = new Promise<string | string[] | undefined>((resolve) => {
    client.ws.once('upgrade', (res) => resolve(res.headers['sec-websocket-protocol']))
  })
  await client.next('connected')
  t.equal(client.ws.protocol, 'forge.v1', 'the server selected forge.v1')
  t.equal(await answered, 'forge.v1', 'the handshake answer names forge.v1 only')
  t.equal(app.socket.connections()[0]?.profileId, 'ann')

  t.test('the token order in the header does not matter', async (t) => {
    const reversed = new Client(`${base}/ws/me`, { protocols: [`bearer.${token}`, SUBPROTOCOL] })
    await reversed.next('connected')
    t.equal(reversed.ws.protocol, 'forge.v1')
    reversed.close()
    await reversed.closed
  })

  t.test('bearer.<jwt> without forge.v1 → 400 FST_SOCKET_BAD_PROTOCOL', async (t) => {
    const result = await refused(`${base}/ws/me`, { protocols: [`bearer.${token}`] })
    t.equal(result.status, 400)
    t.equal(result.body.code, 'FST_SOCKET_BAD_PROTOCOL')
    const other = await refused(`${base}/ws/me`, { protocols: ['chat', `bearer.${token}`] })
    t.equal(other.body.code, 'FST_SOCKET_BAD_PROTOCOL')
  })

  t.test('a bad token in the subprotocol → 401', async (t) => {
    const result = await refused(`${base}/ws/me`, { protocols: [SUBPROTOCOL, 'bearer.nope'] })
    t.equal(result.status, 401)
    t.equal(result.body.code, 'FST_SOCKET_TOKEN_INVALID')
  })

  t.test('another subprotocol offered with an Authorization header is selected as ws would', async (t) => {
    const other = new Client(`${base}/ws/me`, { protocols: ['chat'], ...bearer(token) })
    await other.next('connected')
    t.equal(other.ws.protocol, 'chat')
    other.close()
    await other.closed
  })

  t.test('selectProtocol never picks a bearer entry', async (t) => {
    t.equal(selectProtocol(new Set([`bearer.${token}`, SUBPROTOCOL])), SUBPROTOCOL)
    t.equal(selectProtocol(new Set([`bearer.${token}`, 'chat'])), 'chat')
    t.equal(selectProtocol(new Set([`bearer.${token}`])), false)
    t.equal(selectProtocol(new Set()), false)
  })

  client.close()
  await client.closed
})

t.test('cookie (opt-in)', async (t) => {
  t.test('without @fastify/cookie → FST_SOCKET_INVALID_OPTIONS at register', async (t) => {
    await t.rejects(build({ auth: { cookie: 'token' } }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /@fastify\/cookie/ })
  })

  t.test('with @fastify/cookie registered first', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(fastifyCookie)
    await app.register(forgeSocket, { jwt: { secret: SECRET }, auth: { cookie: 'token' } })
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
    const base = await listen(app)

    const { client } = await connect(`${base}/ws/me`, undefined, { headers: { cookie: `other=1; token=${sign({ sub: 'ann' })}` } })
    t.equal(app.socket.connections()[0]?.profileId, 'ann')
    client.close()
    await client.closed

    const missing = await refused(`${base}/ws/me`, { headers: { cookie: 'other=1' } })
    t.equal(missing.status, 401)
    t.equal(missing.body.code, 'FST_SOCKET_TOKEN_MISSING')
    const empty = await refused(`${base}/ws/me`, { headers: { cookie: 'token=' } })
    t.equal(empty.body.code, 'FST_SOCKET_TOKEN_MISSING')
    const bad = await refused(`${base}/ws/me`, { headers: { cookie: 'token=abc' } })
    t.equal(bad.body.code, 'FST_SOCKET_TOKEN_INVALID')
  })

  t.test('without the opt-in, a cookie is not a token', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(fastifyCookie)
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
    const base = await listen(app)
    const result = await refused(`${base}/ws/me`, { headers: { cookie: `token=${sign({ sub: 'ann' })}` } })
    t.equal(result.status, 401)
    t.equal(result.body.code, 'FST_SOCKET_TOKEN_MISSING')
  })
})

t.test('?token= (opt-in) works and never reaches a log line', async (t) => {
  const lines: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString().split('\n').filter((l) => l.length > 0))
      callback()
    }
  })
  const app = Fastify({ logger: { level: 'trace', stream } })
  t.after(() => app.close())
  await app.register(forgeSocket, { jwt: { secret: SECRET }, auth: { query: true } })
  const seen: Array<{ url: string, room: string | undefined, token: string | undefined }> = []
  app.get('/ws/q', app.socket.act('q', (app, ps) => {
    seen.push({ url: ps.request.url, room: ps.requestString('room'), token: ps.requestString('token') })
    ps.logger.info({ url: ps.request.url, query: ps.request.query }, 'act ran')
    return ps.upgrade('q')
  }))
  const base = await listen(app)
  const token = sign({ sub: 'ann' })

  const { client } = await connect(`${base}/ws/q?room=a&token=${token}`)
  t.equal(app.socket.connections()[0]?.profileId, 'ann')
  client.close()
  await client.closed
  // The token alone in the query: the URL loses its `?`.
  const alone = await connect(`${base}/ws/q?token=${token}`)
  alone.client.close()
  await alone.client.closed
  // A bad query token is still a 401, and still not logged.
  const badToken = `${token.slice(0, -4)}AAAA`
  const bad = await refused(`${base}/ws/q?token=${badToken}`)
  t.equal(bad.body.code, 'FST_SOCKET_TOKEN_INVALID')
  // Names that merely contain "token=" are not the token, nor is "token=" in the path.
  const lookalike = await refused(`${base}/ws/q?mytoken=decoy`)
  t.equal(lookalike.body.code, 'FST_SOCKET_TOKEN_MISSING')
  const inPath = await refused(`${base}/ws/q/token=decoy`)
  t.equal(inPath.status, 404, 'token= in the path (no query) is left alone')

  t.same(seen, [
    { url: '/ws/q?room=a', room: 'a', token: undefined },
    { url: '/ws/q', room: undefined, token: undefined }
  ], 'the act handler sees the URL without the token')

  await app.close()
  t.ok(lines.length > 0, 'something was logged')
  t.ok(lines.some((l) => l.includes('"url":"/ws/q?room=a"')), 'the request URL is logged without the token')
  t.ok(lines.some((l) => l.includes('"msg":"act ran"')), 'the act logger wrote through the same stream')
  const leaks = lines.filter((l) => l.includes(token) || l.includes(badToken))
  t.same(leaks, [], 'no log line contains a token')
  t.notOk(lines.some((l) => /[?&]token=/.test(l)), 'no log line shows a token= parameter')
  t.ok(lines.some((l) => l.includes('mytoken=decoy')), 'other parameters are logged as they came')
})

t.test('stripQueryToken leaves requests without a query token untouched', async (t) => {
  const cases = [undefined, '/ws/q', '/ws/q?room=a', '/ws/token=abc', '/ws/q?mytoken=abc']
  for (const url of cases) {
    const raw = { url } as IncomingMessage
    stripQueryToken(raw)
    t.equal(raw.url, url, String(url))
  }
  const raw = { url: '/ws/q?a=1&token=abc&b=2' } as IncomingMessage
  stripQueryToken(raw)
  t.equal(raw.url, '/ws/q?a=1&b=2', 'only token is removed, the rest keeps its order')
})

t.test('?token= without the opt-in is ignored (401)', async (t) => {
  const { base } = await start(t)
  const result = await refused(`${base}/ws/me?token=${sign({ sub: 'ann' })}`)
  t.equal(result.status, 401)
  t.equal(result.body.code, 'FST_SOCKET_TOKEN_MISSING')
})

t.test('auth.profile maps claims to the profile', async (t) => {
  const profile = (payload: Record<string, unknown>): Profile => {
    switch (payload.mode) {
      case 'no-id': return { name: payload.name } as unknown as Profile
      case 'numeric-id': return { id: 42 } as unknown as Profile
      case 'empty-id': return asProfile({ id: '' })
      case 'null': return null as unknown as Profile
      case 'string': return 'ann' as unknown as Profile
      case 'throw': throw new Error('account suspended in the database')
      case 'forbidden': throw forbidden('suspended')
      default: return asProfile({ id: `user:${String(payload.uid)}`, name: payload.name })
    }
  }
  const { app, base } = await start(t, { auth: { profile } })
  const { client } = await connect(`${base}/ws/me`, sign({ uid: 7, name: 'Ann' }))
  const [info] = app.socket.connections()
  t.equal(info?.profileId, 'user:7', 'a token without sub is fine when the mapper gives an id')
  t.same(info?.metadata, { profile: { id: 'user:7', name: 'Ann' } }, 'ps.profile is what the mapper returned')
  client.close()
  await client.closed

  for (const mode of ['no-id', 'numeric-id', 'empty-id', 'null', 'string']) {
    const result = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', mode, name: 'Ann' })))
    t.equal(result.status, 401, `${mode}: 401`)
    t.equal(result.body.code, 'FST_SOCKET_TOKEN_INVALID', `${mode}: code`)
  }

  // Regression: a mapper that threw a plain error answered 500 with the error's own message.
  const thrown = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', mode: 'throw' })))
  t.equal(thrown.status, 401, 'a mapper that throws refuses the token')
  t.equal(thrown.body.code, 'FST_SOCKET_TOKEN_INVALID')
  t.notMatch(thrown.body.message, /database/, 'its message does not reach the client')
  const coded = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann', mode: 'forbidden' })))
  t.equal(coded.status, 403, 'a coded 4xx error from the mapper passes through')
  t.equal(coded.body.code, 'FST_SOCKET_FORBIDDEN')
})

t.test('an async auth.profile mapper is awaited', async (t) => {
  const { app, base } = await start(t, { auth: { profile: async (payload) => await Promise.resolve(asProfile({ id: `async:${String(payload.sub)}` })) } })
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }))
  t.equal(app.socket.connections()[0]?.profileId, 'async:ann')
  client.close()
  await client.closed
})

t.test('auth.profile must be a function', async (t) => {
  await t.rejects(build({ auth: { profile: 'nope' as unknown as () => Profile } }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/auth\/profile/ })
})

t.test('auth.algorithms is an allow-list', async (t) => {
  const { base } = await start(t, { auth: { algorithms: ['HS512'] } })
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann' }, { algorithm: 'HS512' }))
  client.close()
  await client.closed
  const result = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann' })))
  t.equal(result.status, 401)
  t.equal(result.body.code, 'FST_SOCKET_TOKEN_INVALID')
  t.match(result.body.message, /algorithm/)
  await t.rejects(build({ auth: { algorithms: [] } }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
  await t.rejects(build({ auth: { algorithms: ['none'] as unknown as ['HS256'] } }), { code: 'FST_SOCKET_INVALID_OPTIONS' })
})

t.test('optional auth route', async (t) => {
  const { app, base } = await start(t)

  t.test('no token → profile null, connected', async (t) => {
    const { client, connected } = await connect(`${base}/ws/maybe`)
    t.equal(connected.cmd, 'connected')
    const [info] = app.socket.connections()
    t.equal(info?.profileId, null)
    t.same(info?.metadata, { profile: null, claims: null })
    client.close()
    await client.closed
  })

  t.test('a valid token → its profile and claims', async (t) => {
    const { client } = await connect(`${base}/ws/maybe`, sign({ sub: 'ann' }))
    const [info] = app.socket.connections()
    t.equal(info?.profileId, 'ann')
    t.match(info?.metadata, { profile: { id: 'ann' }, claims: { sub: 'ann' } })
    client.close()
    await client.closed
  })

  t.test('an invalid token is still 401', async (t) => {
    const bad = await refused(`${base}/ws/maybe`, bearer(sign({ sub: 'ann' }, { key: 'another-secret-that-is-long-enough-too' })))
    t.equal(bad.status, 401)
    t.equal(bad.body.code, 'FST_SOCKET_TOKEN_INVALID')
    const expired = await refused(`${base}/ws/maybe`, bearer(sign({ sub: 'ann', exp: nowSeconds() - 60 })))
    t.equal(expired.body.code, 'FST_SOCKET_TOKEN_EXPIRED')
    const protocol = await refused(`${base}/ws/maybe`, { protocols: ['bearer.x'] })
    t.equal(protocol.body.code, 'FST_SOCKET_BAD_PROTOCOL')
  })
})

t.test('an app that registered @fastify/jwt itself', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyJwt, { secret: SECRET, verify: { checkTyp: 'jwt' } })
  await app.register(forgeSocket)
  app.get('/ws/me', app.socket.act('me', (app, ps) => ps.upgrade('me')))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/me`, app.jwt.sign({ sub: 'ann' }))
  t.equal(app.socket.connections()[0]?.profileId, 'ann')
  client.close()
  await client.closed
  // Its own verify options still apply (here: typ must be JWT) …
  const typ = await refused(`${base}/ws/me`, bearer(handmade({ alg: 'HS256', typ: 'other' }, { sub: 'ann' }, SECRET)))
  t.equal(typ.status, 401)
  t.equal(typ.body.code, 'FST_SOCKET_TOKEN_INVALID')
  // … and so does forge-socket's allow-list.
  const hs512 = await refused(`${base}/ws/me`, bearer(sign({ sub: 'ann' }, { algorithm: 'HS512' })))
  t.equal(hs512.body.code, 'FST_SOCKET_TOKEN_INVALID')
})

t.test('neither a jwt option nor @fastify/jwt → FST_SOCKET_INVALID_OPTIONS', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close().catch(() => {}))
  await t.rejects(async () => { await app.register(forgeSocket) }, { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/jwt\/secret/ })
})

t.test('a token that expires during the connection closes it with 4001', async (t) => {
  const { app, base } = await start(t, { auth: { expiryGrace: 0 } })
  const onServer = closes(app)
  // fast-jwt's exp is in seconds; +2 leaves at least one second to connect.
  const { client, connected } = await connect(`${base}/ws/me`, sign({ sub: 'ann', exp: nowSeconds() + 2 }))
  t.equal(app.socket.connections().length, 1)
  const closed = await client.closed
  t.equal(closed.code, 4001)
  t.equal(closed.reason, 'token expired')
  t.equal(await onServer.wait(idOf(connected)), 4001, 'the server saw the same close')
  t.equal(app.socket.connections().length, 0)
})

t.test('a token with a far exp keeps the connection open', async (t) => {
  const { app, base } = await start(t)
  const { client } = await connect(`${base}/ws/me`, sign({ sub: 'ann', exp: nowSeconds() + 3600 }))
  const pong = await client.request('me', 'ping', null)
  t.equal(pong.cmd, 'pong')
  t.equal(app.socket.connections().length, 1)
  client.close()
  t.equal((await client.closed).code, 1000)
})
