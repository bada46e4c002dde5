import t, { type Test } from 'tap'
import type WebSocket from 'ws'
import type { Dedupe, Message, Socket } from '../lib/client/index.js'
import { Requests } from '../lib/client/requests.js'
import { Resender } from '../lib/client/resend.js'
import { inState, rawServer, reconnected, recordedClient as client, rejection, within } from './helpers/client-state.js'

// The client's half of the dedupe of client commands (docs/client.md, Delivery): an id on every application
// message, a request the connection lost sent again with the same id on the next one (only within the server's
// window), and "in progress" answers asked again later. Against raw `ws` servers scripted by each test, which
// announce their dedupe in `connected`.

type Frame = Message & { id?: string }
type Raw = Awaited<ReturnType<typeof rawServer>>

const USER: Dedupe = { window: 120_000, scope: 'user' }
/** A window that passes within a test: the client stops sending at 300 − 30 ms. */
const SHORT: Dedupe = { window: 300, scope: 'user' }
/** A reconnection delay that ends past SHORT's window. */
const PAST_SHORT = { initialDelay: SHORT.window + 100, maxDelay: SHORT.window + 100, jitter: 0 }
const RESERVED = ['subscribe', 'unsubscribe', 'auth.refresh', 'ping', 'history']

/** A raw server whose n-th `connected` announces `dedupe(n)` (none: undefined); it hands each message to `on`. */
async function server (t: Test, dedupe: (n: number) => Dedupe | undefined, on: (ws: WebSocket, message: Frame, n: number) => void = () => {}): Promise<Raw> {
  return rawServer(t, (ws, n) => {
    ws.on('message', (data) => on(ws, JSON.parse(String(data)) as Frame, n))
  }, (n) => {
    const announced = dedupe(n)
    return announced === undefined ? {} : { dedupe: announced }
  })
}

const always = (dedupe: Dedupe | undefined) => () => dedupe

function answer (ws: WebSocket, to: Frame, cmd: string, param: unknown, extra: Record<string, unknown> = {}): void {
  ws.send(JSON.stringify({ channel: to.channel, cmd, param, ref: to.ref, ...extra }))
}

/** The frames with `cmd` the server got, each with the connection it came on. */
function got (raw: Raw, cmd: string): Array<{ n: number, message: Frame }> {
  return raw.received.items.filter((r) => r.message.cmd === cmd) as Array<{ n: number, message: Frame }>
}

let markers = 0
/**
 * Sends a marker on the open connection and waits until the server has it: a connection delivers in order, so
 * whatever the client sent before (a resend included) has arrived by then.
 */
async function drained (raw: Raw, socket: Socket): Promise<void> {
  const marker = ++markers
  socket.send('home', 'marker', marker)
  await within(raw.received.until((items) => items.some((r) => r.message.cmd === 'marker' && r.message.param === marker)), 'marker')
}

t.test('ids: on every application message, queued or not, <instanceId>.<counter in base 36>; none on the reserved commands', async (t) => {
  const raw = await server(t, always(USER), (ws, m) => {
    if (m.cmd === 'subscribe' || m.cmd === 'unsubscribe') answer(ws, m, 'reply', { channel: m.channel })
    else if (m.ref !== undefined) answer(ws, m, 'reply', m.param)
  })
  const c = client(t, { url: raw.url, heartbeat: false })
  c.socket.send('home', 'note', 'queued')
  const queued = c.socket.request('home', 'echo', 'queued request')
  await within(inState(c.socket, 'open'), 'open')
  t.equal(await within(queued, 'answer'), 'queued request')
  await c.socket.subscribe('news')
  for (let i = 0; i < 36; i++) c.socket.send({ channel: 'home', cmd: 'note', param: i })
  t.equal(await c.socket.request('home', 'echo', 'open'), 'open')
  await c.socket.request('home', 'history', { limit: 1 })
  await c.socket.unsubscribe('news')
  for (const cmd of RESERVED) c.socket.send('home', cmd, null)
  await drained(raw, c.socket)

  const frames = raw.received.items.map((r) => r.message as Frame)
  const app = frames.filter((m) => !RESERVED.includes(m.cmd))
  const instance = c.socket.instanceId
  t.match(instance, /^[A-Za-z0-9]{16}$/)
  t.same(app.map((m) => m.id), app.map((_m, i) => `${instance}.${(i + 1).toString(36)}`), 'counted from 1 in base 36, in the order made (the queued ones first)')
  t.equal(app.at(-2)?.id, `${instance}.13`, 'the 39th is 13 in base 36')
  const echo = frames.find((m) => m.cmd === 'echo')
  t.same(Object.keys(echo ?? {}), ['channel', 'cmd', 'param', 'ref', 'id'])
  const reserved = frames.filter((m) => RESERVED.includes(m.cmd))
  t.equal(reserved.length, RESERVED.length + 3, 'subscribe, history, unsubscribe, and each reserved command sent')
  t.ok(reserved.every((m) => !('id' in m)), 'no id on a reserved command')
  t.not(client(t, { url: raw.url, heartbeat: false }).socket.instanceId, instance, 'another Socket, another instance')
})

t.test('a request the connection lost is sent again on the next one: same id and ref, after the re-subscriptions, before the queue; one answer', async (t) => {
  const raw: Raw = await server(t, always(USER), (ws, m, n) => {
    if (m.cmd === 'subscribe') answer(ws, m, 'reply', { channel: m.channel })
    // The first connection takes both requests and closes without answering.
    else if (m.cmd === 'echo' && n === 0 && got(raw, 'echo').length === 2) ws.close(1001)
    else if (m.cmd === 'echo' && n > 0) answer(ws, m, 'reply', m.param)
  })
  const c = client(t, { url: raw.url, heartbeat: false })
  await within(inState(c.socket, 'open'), 'open')
  await c.socket.subscribe('news')
  const first = c.socket.request('home', 'echo', 'first')
  const second = c.socket.request('home', 'echo', 'second')
  await within(inState(c.socket, 'reconnecting'), 'reconnecting')
  c.socket.send('home', 'note', 'queued')
  t.same(await within(Promise.all([first, second]), 'answers'), ['first', 'second'])
  await drained(raw, c.socket)

  const echoes = got(raw, 'echo')
  t.same(echoes.map((r) => [r.n, r.message.param]), [[0, 'first'], [0, 'second'], [1, 'first'], [1, 'second']], 'resent once each, the first sent first')
  t.strictSame(echoes[2]?.message, echoes[0]?.message, 'the same frame: id and ref')
  t.strictSame(echoes[3]?.message, echoes[1]?.message)
  t.same(raw.received.items.filter((r) => r.n === 1).map((r) => r.message.cmd), ['subscribe', 'echo', 'echo', 'note', 'marker'])
  t.ok(c.lines.items.includes('[forge-socket] resend 2'))
  t.same(c.errors.items, [])
})

for (const [name, dedupe] of [['no dedupe announced', undefined], ["scope 'connection'", { window: 120_000, scope: 'connection' }]] as const) {
  t.test(`${name}: a request the connection lost is rejected with FST_SOCKET_CONNECTION_CLOSED, never resent`, async (t) => {
    const raw = await server(t, always(dedupe), (ws, m, n) => { if (m.cmd === 'echo' && n === 0) ws.close(1001) })
    const c = client(t, { url: raw.url, heartbeat: false })
    await within(inState(c.socket, 'open'), 'open')
    const back = reconnected(c.socket)
    const lost = await within(rejection(c.socket.request('home', 'echo', 'x')), 'rejection')
    t.match(lost, { code: 'FST_SOCKET_CONNECTION_CLOSED', closeCode: 1001 })
    await within(back, 'reconnection')
    await drained(raw, c.socket)
    t.same(got(raw, 'echo').map((r) => r.n), [0], 'not sent again')
  })
}

t.test('the next connection does not dedupe: the request kept is rejected as lost, not sent', async (t) => {
  const raw = await server(t, (n) => n === 0 ? USER : undefined, (ws, m, n) => { if (m.cmd === 'echo' && n === 0) ws.close(1001) })
  const c = client(t, { url: raw.url, heartbeat: false })
  await within(inState(c.socket, 'open'), 'open')
  const back = reconnected(c.socket)
  const lost = rejection(c.socket.request('home', 'echo', 'x'))
  await within(back, 'reconnection')
  t.match(await within(lost, 'rejection'), { code: 'FST_SOCKET_CONNECTION_CLOSED', closeCode: 1001 })
  await drained(raw, c.socket)
  t.same(got(raw, 'echo').map((r) => r.n), [0])
})

t.test('past the window: the request is rejected with FST_SOCKET_MESSAGE_DROPPED (dedupe-window), never resent', async (t) => {
  const raw = await server(t, always(SHORT), (ws, m, n) => {
    if (m.cmd === 'echo' && n === 0) ws.close(1001)
    else if (m.cmd === 'echo') answer(ws, m, 'reply', m.param)
  })
  // The reconnection waits past the window.
  const c = client(t, { url: raw.url, heartbeat: false, reconnect: PAST_SHORT })
  await within(inState(c.socket, 'open'), 'open')
  const dropped = await within(rejection(c.socket.request('home', 'echo', 'x')), 'rejection')
  t.match(dropped, { code: 'FST_SOCKET_MESSAGE_DROPPED', message: /dedupe-window/ })
  await within(inState(c.socket, 'open'), 'open again')
  await drained(raw, c.socket)
  t.same(got(raw, 'echo').map((r) => r.n), [0], 'not sent again')
  t.ok(c.lines.items.includes('[forge-socket] drop (dedupe-window)'))
})

t.test('queued longer than the window', async (t) => {
  t.test('with dedupe: a send is dropped and reported, a request rejected, neither sent', async (t) => {
    const raw = await server(t, always(SHORT))
    const c = client(t, { url: raw.url, heartbeat: false, reconnect: PAST_SHORT })
    await within(inState(c.socket, 'open'), 'open')
    raw.connections.items[0]?.close(1001)
    await within(inState(c.socket, 'reconnecting'), 'reconnecting')
    c.socket.send('home', 'note', 'old')
    const request = rejection(c.socket.request('home', 'echo', 'old'))
    await within(inState(c.socket, 'open'), 'open again')
    t.match(await within(request, 'rejection'), { code: 'FST_SOCKET_MESSAGE_DROPPED', message: /dedupe-window/ })
    t.match(c.errors.items, [{ code: 'FST_SOCKET_MESSAGE_DROPPED', message: /dedupe-window/ }], 'the send is reported')
    await drained(raw, c.socket)
    t.same([...got(raw, 'note'), ...got(raw, 'echo')], [], 'never sent')
  })

  t.test('without dedupe: no window, both are sent', async (t) => {
    const raw = await server(t, always(undefined), (ws, m) => { if (m.cmd === 'echo') answer(ws, m, 'reply', m.param) })
    const c = client(t, { url: raw.url, heartbeat: false, reconnect: PAST_SHORT })
    await within(inState(c.socket, 'open'), 'open')
    raw.connections.items[0]?.close(1001)
    await within(inState(c.socket, 'reconnecting'), 'reconnecting')
    c.socket.send('home', 'note', 'old')
    t.equal(await within(c.socket.request('home', 'echo', 'old'), 'answer'), 'old')
    t.same(got(raw, 'note').map((r) => r.n), [1])
    t.same(c.errors.items, [])
  })
})

t.test('FST_SOCKET_IN_PROGRESS, then FST_SOCKET_DEDUPE_UNAVAILABLE: the same frame again 250 ms, then 500 ms later; then the reply', async (t) => {
  const at: number[] = []
  const raw = await server(t, always(USER), (ws, m) => {
    if (m.cmd !== 'echo') return
    at.push(Date.now())
    if (at.length === 1) answer(ws, m, 'error', { code: 'FST_SOCKET_IN_PROGRESS', message: 'still running' })
    else if (at.length === 2) answer(ws, m, 'error', { code: 'FST_SOCKET_DEDUPE_UNAVAILABLE', message: 'store away' })
    else answer(ws, m, 'reply', m.param)
  })
  const c = client(t, { url: raw.url, heartbeat: false })
  await within(inState(c.socket, 'open'), 'open')
  t.equal(await within(c.socket.request('home', 'echo', 'x'), 'answer'), 'x')
  const echoes = got(raw, 'echo').map((r) => r.message)
  t.equal(echoes.length, 3)
  t.ok(echoes.every((m) => JSON.stringify(m) === JSON.stringify(echoes[0])), 'the same frame each time: id and ref')
  const [a = 0, b = 0, d = 0] = at
  // Timers do not fire early; a few ms of rounding aside.
  t.ok(b - a >= 245, `then ${b - a} ms`)
  t.ok(d - b >= 495, `then ${d - b} ms`)
  t.same(c.errors.items, [], 'not reported')
})

t.test('FST_SOCKET_IN_PROGRESS until past the window: rejected with FST_SOCKET_MESSAGE_DROPPED (dedupe-window)', async (t) => {
  const raw = await server(t, always(SHORT), (ws, m) => { if (m.cmd === 'echo') answer(ws, m, 'error', { code: 'FST_SOCKET_IN_PROGRESS', message: 'still running' }) })
  const c = client(t, { url: raw.url, heartbeat: false })
  await within(inState(c.socket, 'open'), 'open')
  t.match(await within(rejection(c.socket.request('home', 'echo', 'x')), 'rejection'), { code: 'FST_SOCKET_MESSAGE_DROPPED', message: /dedupe-window/ })
  const echoes = got(raw, 'echo')
  // Sent at 0 and (unless the machine was slow) at 250 ms; the next retry would be at 750 ms, past 270.
  t.ok(echoes.length >= 1 && echoes.length <= 2, `${echoes.length} sent`)
})

t.test('FST_SOCKET_IN_PROGRESS without dedupe announced: an error like any other', async (t) => {
  const raw = await server(t, always(undefined), (ws, m) => { if (m.cmd === 'echo') answer(ws, m, 'error', { code: 'FST_SOCKET_IN_PROGRESS', message: 'still running' }) })
  const c = client(t, { url: raw.url, heartbeat: false })
  await within(inState(c.socket, 'open'), 'open')
  t.match(await within(rejection(c.socket.request('home', 'echo', 'x')), 'rejection'), { code: 'FST_SOCKET_IN_PROGRESS' })
  t.equal(got(raw, 'echo').length, 1)
})

t.test('FST_SOCKET_IN_PROGRESS, then the connection drops: the request is resent once, on the next connection', async (t) => {
  /** Later than the first "in progress" retry (250 ms). */
  const late = 400
  const inProgressThenClose = (answerAfter: number) => async (t: Test): Promise<Raw> => server(t, always(USER), (ws, m, n) => {
    if (m.cmd !== 'echo') return
    if (n > 0) return void setTimeout(() => answer(ws, m, 'reply', m.param), answerAfter)
    answer(ws, m, 'error', { code: 'FST_SOCKET_IN_PROGRESS', message: 'still running' })
    ws.close(1001)
  })
  const cases = [
    ['back before the retry, answered after it: the resend replaced the retry', 0, late],
    ['the retry comes while down: it waits for the resend', late, 0]
  ] as const
  for (const [name, reconnectAfter, answerAfter] of cases) {
    t.test(name, async (t) => {
      const raw = await inProgressThenClose(answerAfter)(t)
      const c = client(t, { url: raw.url, heartbeat: false, reconnect: { initialDelay: reconnectAfter, maxDelay: reconnectAfter, jitter: 0 } })
      await within(inState(c.socket, 'open'), 'open')
      t.equal(await within(c.socket.request('home', 'echo', 'x'), 'answer'), 'x')
      await drained(raw, c.socket)
      const echoes = got(raw, 'echo')
      t.same(echoes.map((r) => r.n), [0, 1])
      t.strictSame(echoes[1]?.message, echoes[0]?.message)
    })
  }
})

t.test('a reply with dup: true resolves the request with its param', async (t) => {
  const raw = await server(t, always(USER), (ws, m) => { if (m.cmd === 'echo') answer(ws, m, 'reply', { saved: 1 }, { dup: true }) })
  const heard: string[] = []
  const c = client(t, { url: raw.url, heartbeat: false, onMessage: (m) => heard.push(m.cmd) })
  await within(inState(c.socket, 'open'), 'open')
  t.same(await within(c.socket.request('home', 'echo', 'x'), 'answer'), { saved: 1 })
  t.same(heard, ['connected'], 'consumed by the request, like any reply')
})

t.test('a request kept to be resent', async (t) => {
  const closing = (code: number) => async (t: Test): Promise<Raw> => server(t, always(USER), (ws, m) => { if (m.cmd === 'echo') ws.close(code) })

  t.test('close() rejects it with FST_SOCKET_CONNECTION_CLOSED', async (t) => {
    const raw = await closing(1001)(t)
    const c = client(t, { url: raw.url, heartbeat: false, reconnect: { initialDelay: 60_000, jitter: 0 } })
    await within(inState(c.socket, 'open'), 'open')
    const closed = rejection(c.socket.request('home', 'echo', 'x'))
    await within(inState(c.socket, 'reconnecting'), 'reconnecting')
    c.socket.close()
    t.match(await within(closed, 'rejection'), { code: 'FST_SOCKET_CONNECTION_CLOSED', message: 'The socket was closed' })
  })

  t.test('a close code that stops the client rejects it with that close', async (t) => {
    const raw = await closing(4003)(t)
    const c = client(t, { url: raw.url, heartbeat: false })
    await within(inState(c.socket, 'open'), 'open')
    t.match(await within(rejection(c.socket.request('home', 'echo', 'x')), 'rejection'), { code: 'FST_SOCKET_CONNECTION_CLOSED', closeCode: 4003 })
    t.equal(c.socket.state, 'closed')
  })

  t.test('its timeout keeps running across the reconnection', async (t) => {
    const raw = await server(t, always(USER), (ws, m, n) => { if (m.cmd === 'echo' && n === 0) ws.close(1001) })
    const c = client(t, { url: raw.url, heartbeat: false })
    await within(inState(c.socket, 'open'), 'open')
    const timedOut = await within(rejection(c.socket.request('home', 'echo', 'x', { timeout: 300 })), 'rejection')
    t.match(timedOut, { code: 'FST_SOCKET_REQUEST_TIMEOUT' })
    await drained(raw, c.socket)
    t.same(got(raw, 'echo').map((r) => r.n), [0, 1], 'resent, and never answered')
  })
})

t.test('Resender: the window less its margin (a tenth, at most 5 s); what counts as an announced dedupe', async (t) => {
  const resender = new Resender(new Requests(), { report: () => {}, log: () => {} }, { open: () => null, closed: () => false })
  t.notOk(resender.late(0), 'no dedupe announced: nothing is late')
  resender.connected({ window: 120_000, scope: 'user' })
  t.ok(resender.late(Date.now() - 115_100))
  t.notOk(resender.late(Date.now() - 114_900), 'a 5 s margin')
  resender.connected({ window: 1000, scope: 'connection' })
  t.ok(resender.late(Date.now() - 950))
  t.notOk(resender.late(Date.now() - 850), 'a 100 ms margin')
  for (const bad of [null, {}, { window: 0, scope: 'user' }, { window: Number.NaN, scope: 'user' }, { window: Infinity, scope: 'user' }, { window: 1000, scope: 'everyone' }, { window: '1000', scope: 'user' }]) {
    resender.connected(bad as unknown as Dedupe)
    t.notOk(resender.late(0), `${JSON.stringify(bad)} is no dedupe`)
  }
  t.equal(resender.id('ping'), undefined)
  t.equal(resender.id('echo'), `${resender.instance}.1`)
})

t.test('against forge-socket itself (memory broker): a request whose answer was lost with the connection is sent again, answered from the record, and ran once', async (t) => {
  const { serve, sign } = await import('./helpers/server.js')
  let runs = 0
  const { base } = await serve(t, {}, (app) => {
    // Applies, then loses the connection before the answer can go out.
    app.socket.command('apply-then-drop', {
      handler: (_param, ctx) => {
        runs++
        app.socket.disconnect(ctx.connection.id, 1001)
        return { runs }
      }
    })
  })
  const { socket, lines } = client(t, { url: `${base}/ws/lobby`, token: sign({ sub: 'ann' }) })
  await within(inState(socket, 'open'), 'the first connection')
  const answer = await within(socket.request('room-lobby', 'apply-then-drop', null), 'the answer')
  t.same(answer, { runs: 1 }, 'the first run\'s answer, from the record')
  t.equal(runs, 1, 'the handler ran once')
  t.ok(lines.items.some((line) => line.includes('resend 1')), 'sent again after the reconnection')
})
