// The admin (forgeSocketAdmin): its JSON API for admins only (401 without a token, 403 for a non-admin), the tap
// refused before the upgrade, its events without payloads by default, a tap that can't keep up, and the page's files.
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import Fastify, { type FastifyInstance } from 'fastify'
import forgeSocket, { forgeSocketAdmin, type AdminOptions, type ForgeSocketOptions } from '../plugin.js'
import { build, closes, connect, listen, refused, sign, SECRET } from './helpers/server.js'

const ADMIN = sign({ sub: 'root' })
const USER = sign({ sub: 'ann' })

async function start (t: Test, options: Partial<AdminOptions> = {}, forge: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string, http: string, closed: (id: string) => Promise<number> }> {
  const app = await build({ presence: false, ...forge }, async (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
    app.socket.command('echo', { handler: (param) => param })
    await app.register(forgeSocketAdmin, { prefix: '/admin/sockets', authorize: (_request, profile) => profile.id === 'root', login: '/api/login', ...options })
  })
  t.after(() => app.close())
  const closed = closes(app).wait
  const base = await listen(app)
  return { app, base, http: `${base.replace(/^ws/, 'http')}/admin/sockets`, closed }
}

async function call (url: string, token?: string, body?: unknown): Promise<{ status: number, body: any, headers: Headers }> {
  const headers: Record<string, string> = {}
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  const response = await fetch(url, { method: body === undefined ? 'GET' : 'POST', headers, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: response.status, body: await response.json().catch(() => null), headers: response.headers }
}

async function open (base: string, user: string, room = 'a'): Promise<Awaited<ReturnType<typeof connect>> & { id: string }> {
  const opened = await connect(`${base}/ws/room/${room}`, sign({ sub: user }))
  return { ...opened, id: (opened.connected.param as { connectionId: string }).connectionId }
}

/** A tap client: collects its events and waits for the next that matches. */
class TapClient {
  readonly ws: WebSocket
  readonly events: any[] = []
  #waiters: Array<{ match: (e: any) => boolean, resolve: (e: any) => void }> = []
  readonly opened: Promise<void>
  readonly closed: Promise<number>

  constructor (url: string, token: string) {
    this.ws = new WebSocket(url, ['forge.v1', `bearer.${token}`])
    this.ws.on('message', (data) => {
      const event = JSON.parse(data.toString())
      this.events.push(event)
      const i = this.#waiters.findIndex((w) => w.match(event))
      if (i !== -1) this.#waiters.splice(i, 1)[0]?.resolve(event)
    })
    this.opened = new Promise((resolve, reject) => { this.ws.once('open', resolve); this.ws.once('error', reject) })
    this.closed = new Promise((resolve) => this.ws.once('close', resolve))
  }

  next (match: (e: any) => boolean): Promise<any> {
    const seen = this.events.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve) => this.#waiters.push({ match, resolve }))
  }
}

t.test('registering', async (t) => {
  t.test('without authorize: an error at boot', async (t) => {
    const app = await build()
    t.after(() => app.close())
    await t.rejects(async () => { await app.register(forgeSocketAdmin, { prefix: '/admin' } as unknown as AdminOptions) }, { code: 'FST_SOCKET_INVALID_OPTIONS', message: /authorize/ })
  })
  t.test('before forge-socket: an error at boot', async (t) => {
    const app = Fastify()
    t.after(() => app.close())
    await t.rejects(async () => { await app.register(forgeSocketAdmin, { authorize: () => true }) }, { code: 'FST_SOCKET_INVALID_OPTIONS', message: /forge-socket registered first/ })
  })
  t.test('wrong options', async (t) => {
    for (const [options, message] of [[{ login: '' }, /login/], [{ payloads: 'yes' }, /payloads/], [{ tapBufferLimit: 10 }, /tapBufferLimit/]] as const) {
      const app = Fastify()
      await app.register(forgeSocket, { jwt: { secret: SECRET } })
      await t.rejects(async () => { await app.register(forgeSocketAdmin, { authorize: () => true, ...options } as unknown as AdminOptions) }, { code: 'FST_SOCKET_INVALID_OPTIONS', message })
      await app.close()
    }
  })
})

t.test('the API: admins only', async (t) => {
  const { app, base, http, closed } = await start(t)
  const ann = await open(base, 'ann')
  const bob = await open(base, 'bob', 'b')

  for (const [path, body] of [['api/status'], ['api/channels'], ['api/connections'], ['api/send', { channel: 'room-a', cmd: 'x' }], ['api/disconnect', { id: ann.id }]] as Array<[string, unknown?]>) {
    const none = await call(`${http}/${path}`, undefined, body)
    t.equal(none.status, 401, `${path} without a token`)
    t.equal(none.body.code, 'FST_SOCKET_TOKEN_MISSING')
    const user = await call(`${http}/${path}`, USER, body)
    t.equal(user.status, 403, `${path} for a user who is not an admin`)
    t.equal(user.body.code, 'FST_SOCKET_FORBIDDEN')
    const bad = await call(`${http}/${path}`, 'not.a.token', body)
    t.equal(bad.status, 401, `${path} with a bad token`)
    t.equal(user.headers.get('cache-control'), 'no-store')
  }
  t.equal(ann.client.messages.length, 0, 'no refused send reached anyone')

  const status = await call(`${http}/api/status`, ADMIN)
  t.equal(status.status, 200)
  t.match(status.body, { node: { node: app.socket.nodeId, connections: 2, channels: 2, broker: 'ok' }, cluster: { nodes: [{ node: app.socket.nodeId, connections: 2 }] } })

  const channels = await call(`${http}/api/channels`, ADMIN)
  t.same(channels.body.node, app.socket.nodeId)
  t.same(channels.body.channels.map((c: { name: string }) => c.name).sort(), ['room-a', 'room-b'])
  t.match(channels.body.channels.find((c: { name: string }) => c.name === 'room-a'), { connections: 1, users: 1, seq: 0 })

  const all = await call(`${http}/api/connections`, ADMIN)
  t.equal(all.body.connections.length, 2)
  const inB = await call(`${http}/api/connections?channel=room-b`, ADMIN)
  t.match(inB.body.connections, [{ id: bob.id, profileId: 'bob', channels: ['room-b'], ip: '127.0.0.1', buffered: 0, messagesOut: 1 }])

  const sent = ann.client.next('notice')
  const send = await call(`${http}/api/send`, ADMIN, { channel: 'room-a', cmd: 'notice', param: { text: 'maintenance at noon' } })
  t.same(send.body, { delivered: 1 })
  t.match(await sent, { channel: 'room-a', cmd: 'notice', param: { text: 'maintenance at noon' } })

  for (const [body, code] of [[{ channel: 'room a', cmd: 'x' }, 'FST_SOCKET_INVALID_CHANNEL'], [{ channel: 'room-a' }, 'FST_ERR_VALIDATION'], [{ cmd: 'x' }, 'FST_ERR_VALIDATION'], [{ channel: 'room-a', cmd: '' }, 'FST_ERR_VALIDATION'], [{ channel: 'room-a', cmd: 'x'.repeat(200) }, 'FST_SOCKET_BAD_REQUEST']] as const) {
    const wrong = await call(`${http}/api/send`, ADMIN, body)
    t.match(wrong, { status: 400, body: { code } }, JSON.stringify(body))
  }
  const wrongCode = await call(`${http}/api/disconnect`, ADMIN, { id: ann.id, code: 1005 })
  t.match(wrongCode, { status: 400, body: { code: 'FST_SOCKET_BAD_REQUEST' } })

  const gone = await call(`${http}/api/disconnect`, ADMIN, { id: ann.id, code: 4000, reason: 'bye' })
  t.same(gone.body, { here: true })
  t.same(await ann.client.closed, { code: 4000, reason: 'bye' })
  t.equal(await closed(ann.id), 4000)
  const elsewhere = await call(`${http}/api/disconnect`, ADMIN, { id: 'no-such-connection' })
  t.same(elsewhere.body, { here: false }, 'not on this node (asked of the others through the broker)')
})

t.test('the API takes the token from Authorization only, even where the app reads ?token=', async (t) => {
  const { base, http } = await start(t, {}, { auth: { query: true } })
  const byQuery = await call(`${http}/api/status?token=${ADMIN}`)
  t.equal(byQuery.status, 401)
  t.equal(byQuery.body.code, 'FST_SOCKET_TOKEN_MISSING')
  const tap = new TapClient(`${http.replace(/^http/, 'ws')}/tap?token=${ADMIN}`, ADMIN)
  t.after(() => tap.ws.close())
  t.match(await tap.next((e) => e.type === 'hello'), { type: 'hello' }, 'the tap takes what act routes take')
  void base
})

t.test('the page and its config', async (t) => {
  const { http } = await start(t)
  const page = await fetch(`${http}/`)
  t.equal(page.status, 200)
  t.match(page.headers.get('content-type'), /text\/html/)
  t.match(page.headers.get('content-security-policy'), /default-src 'self'/)
  t.match(await page.text(), /<form id="login"/)
  const script = await fetch(`${http}/admin.js`)
  t.match(script.headers.get('content-type'), /javascript/)
  const style = await fetch(`${http}/admin.css`)
  t.match(style.headers.get('content-type'), /text\/css/)
  const bare = await fetch(http, { redirect: 'manual' })
  t.equal(bare.status, 302)
  t.equal(bare.headers.get('location'), '/admin/sockets/')
  t.same((await call(`${http}/api/config`)).body, { login: '/api/login' })
})

t.test('the tap', async (t) => {
  const { app, base, http, closed } = await start(t)
  const tapUrl = `${http.replace(/^http/, 'ws')}/tap`

  t.test('refused before the upgrade: 401, 403, 426', async (t) => {
    t.equal((await refused(tapUrl)).status, 401)
    const user = await refused(tapUrl, { protocols: ['forge.v1', `bearer.${USER}`] })
    t.match(user, { status: 403, body: { code: 'FST_SOCKET_FORBIDDEN' } })
    const plain = await fetch(`${http}/tap`, { headers: { authorization: `Bearer ${ADMIN}` } })
    t.equal(plain.status, 426)
  })

  t.test('events: connection events and messages, without payloads', async (t) => {
    const tap = new TapClient(tapUrl, ADMIN)
    t.after(() => tap.ws.close())
    t.match(await tap.next((e) => e.type === 'hello'), { node: app.socket.nodeId, payloads: false })
    const ann = await open(base, 'ann')
    t.match(await tap.next((e) => e.type === 'open'), { node: app.socket.nodeId, connection: ann.id, user: 'ann', channel: 'room-a', ip: '127.0.0.1', time: Number })
    t.match(await tap.next((e) => e.type === 'join'), { connection: ann.id, channel: 'room-a' })
    await ann.client.request('room-a', 'echo', { secret: 'not for the tap' }, 'r1')
    t.match(await tap.next((e) => e.type === 'in'), { connection: ann.id, channel: 'room-a', cmd: 'echo', size: Number })
    t.match(await tap.next((e) => e.type === 'out' && e.cmd === 'reply'), { connection: ann.id, channel: 'room-a' })
    app.socket.broadcast('room-a', { cmd: 'news', param: 'secret too' })
    t.match(await tap.next((e) => e.type === 'broadcast'), { channel: 'room-a', cmd: 'news', recipients: 1 })
    ann.client.ws.close(1000)
    await closed(ann.id)
    t.match(await tap.next((e) => e.type === 'close'), { connection: ann.id, code: 1000 })
    t.match(await tap.next((e) => e.type === 'leave'), { connection: ann.id, channel: 'room-a' })
    t.notOk(tap.events.some((e) => 'param' in e), 'no payload in any event')
    t.notOk(JSON.stringify(tap.events).includes('secret'), 'nothing of a payload')
  })
})

t.test('with payloads on, events carry each param', async (t) => {
  const { base, http } = await start(t, { payloads: true })
  const tap = new TapClient(`${http.replace(/^http/, 'ws')}/tap`, ADMIN)
  t.after(() => tap.ws.close())
  t.match(await tap.next((e) => e.type === 'hello'), { payloads: true })
  const ann = await open(base, 'ann')
  await ann.client.request('room-a', 'echo', { text: 'hi' }, 'r1')
  t.match(await tap.next((e) => e.type === 'in'), { cmd: 'echo', param: { text: 'hi' } })
  t.match(await tap.next((e) => e.type === 'out' && e.cmd === 'reply'), { param: { text: 'hi' } })
})

t.test('a tap that can\'t keep up loses events, counted, and the node goes on', async (t) => {
  const { app, base, http } = await start(t, { tapBufferLimit: 1024, payloads: true })
  const tap = new TapClient(`${http.replace(/^http/, 'ws')}/tap`, ADMIN)
  t.after(() => tap.ws.close())
  await tap.next((e) => e.type === 'hello')
  const ann = await open(base, 'ann')
  const socket = (tap.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
  socket.pause()
  // 5,000 events of 2 KB: the paused tap's kernel buffers fill first, then its socket holds more than 1 KiB and
  // the rest are dropped.
  const param = 'x'.repeat(2000)
  for (let sent = 1; sent <= 5000; sent++) {
    app.socket.broadcast('room-a', { cmd: 'load', param })
    if (sent % 100 === 0) {
      ann.client.messages.length = 0
      await new Promise((resolve) => setImmediate(resolve))
    }
  }
  socket.resume()
  // The next event after the backlog drains is preceded by the count.
  const drained = tap.next((e) => e.type === 'broadcast' && e.cmd === 'after')
  const dropped = tap.next((e) => e.type === 'dropped')
  while (!tap.events.some((e) => e.type === 'dropped')) {
    app.socket.broadcast('room-a', { cmd: 'after' })
    await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, 20))])
  }
  const { count } = await dropped
  t.ok(count > 0 && count < 5000, `${count} of 5000 events dropped`)
  t.equal(app.socket.connections().length, 1, 'the client is still connected')
})

t.test('taps are closed with 1001 when the app closes', async (t) => {
  const { app, http } = await start(t)
  const tap = new TapClient(`${http.replace(/^http/, 'ws')}/tap`, ADMIN)
  await tap.next((e) => e.type === 'hello')
  await app.close()
  t.equal(await tap.closed, 1001)
})
