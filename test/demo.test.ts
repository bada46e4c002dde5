import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildDemo, DEV_SECRET } from '../examples/app.js'
import { connect, refused } from './helpers/server.js'

async function start (t: Test): Promise<{ app: FastifyInstance, base: string, http: string, login: (name: string, rooms?: string[]) => Promise<string> }> {
  const app = await buildDemo({ secret: 'demo-test-secret' })
  t.after(() => app.close())
  const http = await app.listen({ port: 0, host: '127.0.0.1' })
  const login = async (name: string, rooms?: string[]): Promise<string> => {
    const res = await app.inject({ method: 'POST', url: '/api/login', payload: { name, ...(rooms ? { rooms } : {}) } })
    t.equal(res.statusCode, 200, `login ${name}`)
    return res.json().token as string
  }
  return { app, base: http.replace(/^http/, 'ws'), http, login }
}

t.test('POST /api/login signs a token with sub and the default rooms', async (t) => {
  const { app, login } = await start(t)
  const token = await login('ann')
  const claims = app.jwt.verify<{ sub: string, rooms: string[], exp: number }>(token)
  t.equal(claims.sub, 'ann')
  t.same(claims.rooms, ['lobby', 'general'])
  t.ok(claims.exp > Date.now() / 1000, 'the token expires')
  const bad = await app.inject({ method: 'POST', url: '/api/login', payload: { name: 'no spaces allowed' } })
  t.equal(bad.statusCode, 400)
})

t.test('chat: room checks before the upgrade', async (t) => {
  const { base, login } = await start(t)
  const token = await login('ann')
  const headers = { authorization: `Bearer ${token}` }
  const invalid = await refused(`${base}/ws/chat/Not_A_Room`, { headers })
  t.equal(invalid.status, 400)
  t.equal(invalid.body.code, 'FST_SOCKET_BAD_REQUEST')
  const forbidden = await refused(`${base}/ws/chat/secret`, { headers })
  t.equal(forbidden.status, 403)
  t.equal(forbidden.body.code, 'FST_SOCKET_FORBIDDEN')
  const anonymous = await refused(`${base}/ws/chat/lobby`)
  t.equal(anonymous.status, 401)
  t.equal(anonymous.body.code, 'FST_SOCKET_TOKEN_MISSING')
})

t.test('chat: two users chat, see each other join and leave', async (t) => {
  const { app, base, login } = await start(t)
  const ann = await connect(`${base}/ws/chat/lobby`, await login('ann'))
  const bob = await connect(`${base}/ws/chat/lobby`, await login('bob'))
  const joined = await ann.client.next('user-joined')
  t.same(joined.param, { user: 'bob', connectionId: bob.connected.param && (bob.connected.param as { connectionId: string }).connectionId })
  t.same(app.socket.connections('chat-room-lobby').map((c) => c.metadata).sort((a, b) => String(a.user).localeCompare(String(b.user))),
    [{ room: 'lobby', user: 'ann' }, { room: 'lobby', user: 'bob' }])

  bob.client.send({ channel: 'chat-room-lobby', cmd: 'chat-message', param: { text: 'hi ann' } })
  for (const side of [ann, bob]) {
    const message = await side.client.next('chat-message')
    const param = message.param as { from: string, text: string, at: string }
    t.equal(param.from, 'bob')
    t.equal(param.text, 'hi ann')
    t.ok(!Number.isNaN(Date.parse(param.at)), 'at is a date')
    t.equal(message.channel, 'chat-room-lobby')
  }

  const tooLong = await ann.client.request('chat-room-lobby', 'chat-message', { text: 'x'.repeat(2001) })
  t.equal(tooLong.cmd, 'error')
  t.equal((tooLong.param as { code: string }).code, 'FST_SOCKET_INVALID_PARAM')
  const empty = await ann.client.request('chat-room-lobby', 'chat-message', { text: '' })
  t.equal((empty.param as { code: string }).code, 'FST_SOCKET_INVALID_PARAM')

  bob.client.close()
  const left = await ann.client.next('user-left')
  t.equal((left.param as { user: string }).user, 'bob')
  ann.client.close()
  await ann.client.closed
})

t.test('notifications: to one user, to everyone, and system updates to several channels', async (t) => {
  const { app, base, login } = await start(t)
  const annToken = await login('ann')
  const ann = await connect(`${base}/ws/notifications`, annToken)
  const bob = await connect(`${base}/ws/notifications`, await login('bob'))
  const annChat = await connect(`${base}/ws/chat/general`, annToken)
  const param = ann.connected.param as { connectionId: string, positions: Record<string, { epoch: string }> }
  t.same(param, { connectionId: param.connectionId, channels: ['user-ann'], dedupe: { window: 120000, scope: 'user' }, positions: { 'user-ann': { epoch: param.positions['user-ann']?.epoch, seq: 0 } } },
    'a user\'s notifications keep history: the position comes with connected')

  const auth = { authorization: `Bearer ${annToken}` }
  // A connection's messages are handled after its onOpen hook (which joins notifications-all), so a ping
  // answered means the join is done.
  for (const side of [ann, bob]) t.equal((await side.client.request('user-x', 'ping', null)).cmd, 'pong')
  t.equal(app.socket.connections('notifications-all').length, 2)

  const direct = await app.inject({ method: 'POST', url: '/api/notify', headers: auth, payload: { to: 'bob', title: 'Hello', message: 'just you' } })
  t.equal(direct.statusCode, 200)
  t.same(direct.json(), { delivered: 1 })
  const toBob = await bob.client.next('notification')
  t.match(toBob.param, { from: 'ann', title: 'Hello', message: 'just you' })
  t.equal(toBob.channel, 'user-bob')

  const everyone = await app.inject({ method: 'POST', url: '/api/notify', headers: auth, payload: { title: 'All', message: 'everyone' } })
  t.same(everyone.json(), { delivered: 2 })
  for (const side of [ann, bob]) t.match((await side.client.next('notification')).param, { title: 'All' })
  t.notOk(ann.client.messages.some((m) => m.cmd === 'notification'), 'ann did not get the direct one')

  const system = await app.inject({ method: 'POST', url: '/api/system', headers: auth, payload: { message: 'maintenance at noon' } })
  t.same(system.json().channels, ['notifications-all', 'chat-room-lobby', 'chat-room-general'])
  for (const side of [ann, bob, annChat]) t.match((await side.client.next('system-update')).param, { message: 'maintenance at noon' })

  const unauthenticated = await app.inject({ method: 'POST', url: '/api/notify', payload: { title: 'x', message: 'y' } })
  t.equal(unauthenticated.statusCode, 401)
  for (const side of [ann, bob, annChat]) side.client.close()
})

t.test('chat messages only go to chat rooms', async (t) => {
  const { base, login } = await start(t)
  const ann = await connect(`${base}/ws/notifications`, await login('ann'))
  const answer = await ann.client.request('user-ann', 'chat-message', { text: 'hello?' })
  t.equal((answer.param as { code: string }).code, 'FST_SOCKET_FORBIDDEN')
  ann.client.close()
})

t.test('GET / serves the demo page; the dev secret is the fallback', async (t) => {
  const { app } = await start(t)
  const page = await app.inject({ url: '/' })
  t.equal(page.statusCode, 200)
  t.match(page.body, /forge-socket demo/)
  t.ok(DEV_SECRET.includes('do-not-use'), 'the dev secret says what it is')
})

t.test('the demo warns loudly when it signs with the dev secret', async (t) => {
  const lines: string[] = []
  const { Writable } = await import('node:stream')
  const stream = new Writable({ write (chunk: Buffer, _enc, done) { lines.push(chunk.toString()); done() } })
  const saved = process.env.JWT_SECRET
  delete process.env.JWT_SECRET
  t.after(() => { if (saved !== undefined) process.env.JWT_SECRET = saved })
  const app = await buildDemo({ logger: { level: 'warn', stream } })
  t.after(() => app.close())
  t.ok(lines.some((line) => line.includes('PUBLIC DEMO SECRET')), 'warned')
})
