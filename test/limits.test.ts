// Issue 4, items 3, 5 (the malformed-frame window), 7, 8 and 12: inbound rate limit, malformed frames, connection
// limits, channel names, slow upgrade requests. Each limit is configured small so the tests wait for events, not time.
import t, { type Test } from 'tap'
import { addressBlock, RateByKey } from '../lib/limits.js'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { connect as tcpConnect, type AddressInfo } from 'node:net'
import Fastify from 'fastify'
import forgeSocket, { type OutboundMessage } from '../plugin.js'
import { RecordingBroker } from './helpers/broker.js'
import { closes, idOf, listen, room, serve, sign, connect, refused, Client, SECRET } from './helpers/server.js'

/** A refusal without its headers (a Date among them), to compare whole. */
function statusAndBody ({ status, body }: { status: number, body: unknown }): { status: number, body: unknown } {
  return { status, body }
}

const auth = (sub: string): { headers: { authorization: string } } => ({ headers: { authorization: `Bearer ${sign({ sub })}` } })
const RULE = '(1–255 characters of A-Z a-z 0-9 _ . : @ / -, no "..")'

/** Waits for the next `n` answers to pings (`pong` or `error`). */
async function answers (client: Client, n: number): Promise<OutboundMessage[]> {
  const got: OutboundMessage[] = []
  for (let i = 0; i < n; i++) got.push(await client.next((m) => m.cmd === 'pong' || m.cmd === 'error'))
  return got
}

/** Proves a connection is open and answering: a ping gets its pong. */
async function alive (t: Test, client: Client, channel: string, label = 'the connection is open and answering'): Promise<void> {
  const ref = `alive-${Math.random().toString(36).slice(2)}`
  t.strictSame(await client.request(channel, 'ping', null, ref), { channel, cmd: 'pong', param: null, ref }, label)
}

const rateLimited = (channel: string): OutboundMessage => ({
  channel, cmd: 'error', param: { code: 'FST_SOCKET_RATE_LIMITED', message: 'Too many messages: slow down' }
})

t.test('inbound rate limit (rateLimit 10/s, burst 20)', async (t) => {
  const perSecond = 10
  const burst = 20
  const { app, base } = await serve(t, { rateLimit: { perSecond, burst } })
  const { client: ann } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: bob } = await connect(`${base}/ws/b`, sign({ sub: 'bob' }))
  t.after(() => { ann.close(); bob.close() })

  t.test('40 pings at once: the burst is answered, every other frame gets FST_SOCKET_RATE_LIMITED, others keep flowing', async (t) => {
    for (let i = 0; i < 40; i++) ann.send({ channel: 'room-a', cmd: 'ping', ref: `p${i}` })
    // Meanwhile bob spends his own whole burst: buckets are per connection.
    for (let i = 0; i < burst; i++) bob.send({ channel: 'room-b', cmd: 'ping', ref: `b${i}` })
    const bobs = await answers(bob, burst)
    t.strictSame(bobs.map((m) => `${m.cmd} ${m.ref}`), Array.from({ length: burst }, (_, i) => `pong b${i}`), 'bob gets all his pongs during the flood')

    const got = await answers(ann, 40)
    const pongs = got.filter((m) => m.cmd === 'pong')
    const refusals = got.filter((m) => m.cmd === 'error')
    // The bucket starts full (20); a frame that arrives 100 ms later finds one more token. The 40 frames are sent
    // at once, so at most a token or two is refilled while they are read.
    t.ok(pongs.length >= burst && pongs.length <= burst + 2, `${pongs.length} pongs: the burst, maybe +1 or 2 refilled`)
    t.strictSame(pongs.slice(0, burst).map((m) => m.ref), Array.from({ length: burst }, (_, i) => `p${i}`), 'the first 20 frames are answered')
    t.equal(refusals.length, 40 - pongs.length, 'every other frame is refused')
    t.strictSame(refusals, refusals.map(() => rateLimited('room-a')), 'each refusal is FST_SOCKET_RATE_LIMITED on the home channel')
    t.strictSame(ann.messages, [], 'nothing else arrived')

    t.equal(app.socket.connections().length, 2, 'the limited connection stays registered')
    t.equal(app.socket.broadcast('room-a', { cmd: 'news', param: 1 }), 1, 'server messages still reach it')
    t.match(await ann.next('news'), { channel: 'room-a', cmd: 'news', param: 1 })
    // The bucket refills at perSecond: after 2 × 1000/perSecond ms it holds at least one token again. This wait is
    // the configured refill time, not a guess at how long something takes.
    await new Promise((resolve) => setTimeout(resolve, 2 * 1000 / perSecond))
    await alive(t, ann, 'room-a', 'once the bucket refilled, the limited client is answered again')
    await alive(t, bob, 'room-b', 'the other client is answered')
  })

  t.test('sustained abuse (more refusals than perSecond × 5 within 5 s) closes with 1008; the other client stays', async (t) => {
    const { client: eve } = await connect(`${base}/ws/e`, sign({ sub: 'eve' }))
    // A fresh connection with a full bucket talks while eve floods (ann and bob spent theirs above).
    const { client: fay } = await connect(`${base}/ws/f`, sign({ sub: 'fay' }))
    t.after(() => fay.close())
    for (let i = 0; i < 120; i++) eve.send({ channel: 'room-e', cmd: 'ping', ref: `e${i}` })
    const fayPong = fay.request('room-f', 'ping', null, 'during')
    t.strictSame(await eve.closed, { code: 1008, reason: 'message rate limit exceeded' })
    t.strictSame(await fayPong, { channel: 'room-f', cmd: 'pong', param: null, ref: 'during' }, 'another client is answered during the flood')
    const pongs = eve.messages.filter((m) => m.cmd === 'pong')
    const refusals = eve.messages.filter((m) => m.cmd === 'error')
    t.ok(pongs.length >= burst && pongs.length <= burst + 2, `${pongs.length} pongs before the close`)
    t.equal(refusals.length, perSecond * 5, 'perSecond × 5 refusals are answered; the next refused frame closes')
    t.strictSame(refusals, refusals.map(() => rateLimited('room-e')))
    t.equal(eve.messages.length, pongs.length + refusals.length, 'nothing else arrived')
    await alive(t, fay, 'room-f', 'the other client is still open after eve was closed')
    t.strictSame(app.socket.connections().map((c) => c.profileId).sort(), ['ann', 'bob', 'fay'], 'only eve was closed')
  })
})

t.test('malformed frames past badFrames.max in the window close with 1008', async (t) => {
  const { base } = await serve(t, { badFrames: { max: 3, window: 10000 } })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: other } = await connect(`${base}/ws/b`, sign({ sub: 'bob' }))
  t.after(() => other.close())
  const bad = { channel: 'room-a', cmd: 'error', param: { code: 'FST_SOCKET_BAD_REQUEST', message: 'Bad request: the frame is not valid JSON' } }
  for (let i = 0; i < 3; i++) {
    client.send(`{not json ${i}`)
    t.strictSame(await client.next('error'), bad, `bad frame ${i + 1} is answered`)
  }
  await alive(t, client, 'room-a', 'three bad frames leave the connection open')
  client.send('{still not json')
  t.strictSame(await client.closed, { code: 1008, reason: 'too many malformed messages' }, 'the fourth closes')
  t.strictSame(client.messages, [], 'the fourth got no error, only the close')
  await alive(t, other, 'room-b', 'another connection is untouched')
})

t.test('by default (20 per 10 s) a handful of malformed frames do not close; the 21st does', async (t) => {
  const { base } = await serve(t)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  for (let i = 0; i < 5; i++) client.send('[')
  const errors = await Promise.all(Array.from({ length: 5 }, () => client.next('error')))
  t.strictSame(errors.map((m) => (m.param as { code: string }).code), Array(5).fill('FST_SOCKET_BAD_REQUEST'))
  await alive(t, client, 'room-a', 'five bad frames: still open')
  for (let i = 0; i < 15; i++) client.send('nope')
  await Promise.all(Array.from({ length: 15 }, () => client.next('error')))
  await alive(t, client, 'room-a', 'twenty bad frames: still open')
  client.send('nope')
  t.strictSame(await client.closed, { code: 1008, reason: 'too many malformed messages' }, 'the 21st closes')
})

t.test('connectionLimits.perIp: the third upgrade from 127.0.0.1 is refused with 429 until a slot is freed', async (t) => {
  const { app, base } = await serve(t, { connectionLimits: { perIp: 2 } })
  const closed = closes(app)
  const { client: ann, connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: bob } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
  t.after(() => bob.close())
  t.strictSame(statusAndBody(await refused(`${base}/ws/a`, auth('carol'))), {
    status: 429,
    body: { statusCode: 429, code: 'FST_SOCKET_TOO_MANY_CONNECTIONS', error: 'Too Many Requests', message: 'Too many connections for this IP address' }
  }, 'a third user from the same IP is refused')
  t.equal(app.socket.connections().length, 2, 'the refused upgrade never became a connection')
  ann.close()
  t.equal(await closed.wait(idOf(connected)), 1000)
  const { client: carol } = await connect(`${base}/ws/a`, sign({ sub: 'carol' }))
  t.strictSame(app.socket.connections().map((c) => c.profileId).sort(), ['bob', 'carol'], 'after a close, the third connection from the IP succeeds')
  t.equal((await refused(`${base}/ws/a`, auth('dave'))).status, 429, 'and the limit holds again')
  carol.close()
})

t.test('connectionLimits.perUser: a second connection of one user is 429; the slot is freed on every close path', async (t) => {
  const { app, base } = await serve(t, { connectionLimits: { perUser: 1 } }, (app) => {
    app.socket.onOpen((conn) => { if (conn.home === 'room-boom') throw new Error('onOpen failed') })
  })
  const closed = closes(app)
  const token = sign({ sub: 'ann' })
  let { client, connected } = await connect(`${base}/ws/a`, token)
  /** Ann's connection on the server is the one just opened, and only that. */
  const annAgain = (t: Test): void => {
    t.strictSame(app.socket.connections().filter((c) => c.profileId === 'ann').map((c) => c.id), [idOf(connected)], 'ann connects again')
  }

  t.test('a second connection of the same sub is refused; another user connects', async (t) => {
    t.strictSame(statusAndBody(await refused(`${base}/ws/b`, auth('ann'))), {
      status: 429,
      body: { statusCode: 429, code: 'FST_SOCKET_TOO_MANY_CONNECTIONS', error: 'Too Many Requests', message: 'Too many connections for this user' }
    })
    const { client: bob } = await connect(`${base}/ws/b`, sign({ sub: 'bob' }))
    t.strictSame(app.socket.connections().map((c) => c.profileId).sort(), ['ann', 'bob'])
    bob.close()
  })

  t.test('client close frees the slot', async (t) => {
    client.close()
    t.equal(await closed.wait(idOf(connected)), 1000)
    ;({ client, connected } = await connect(`${base}/ws/a`, token))
    annAgain(t)
  })

  t.test('app.socket.disconnect frees the slot', async (t) => {
    t.ok(app.socket.disconnect(idOf(connected), 4000, 'bye'))
    t.strictSame(await client.closed, { code: 4000, reason: 'bye' })
    t.equal(await closed.wait(idOf(connected)), 4000)
    ;({ client, connected } = await connect(`${base}/ws/a`, token))
    annAgain(t)
  })

  t.test('the client terminating its socket frees the slot', async (t) => {
    client.ws.terminate()
    t.equal(await closed.wait(idOf(connected)), 1006, 'the server saw the TCP connection drop')
    ;({ client, connected } = await connect(`${base}/ws/a`, token))
    annAgain(t)
  })

  t.test('a socket error (invalid UTF-8 → 1007) frees the slot', async (t) => {
    client.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
    t.equal((await client.closed).code, 1007, 'the client is told 1007')
    // The server's own code is 1006: @fastify/websocket terminates the socket on the error, after ws sent the 1007.
    t.type(await closed.wait(idOf(connected)), 'number', 'the server ran the close path')
    ;({ client, connected } = await connect(`${base}/ws/a`, token))
    annAgain(t)
  })

  t.test('an onOpen hook that throws (close 1011) frees the slot', async (t) => {
    client.close()
    await closed.wait(idOf(connected))
    const boom = await connect(`${base}/ws/boom`, token)
    t.strictSame(await boom.client.closed, { code: 1011, reason: 'internal error' })
    t.equal(await closed.wait(idOf(boom.connected)), 1011)
    ;({ client, connected } = await connect(`${base}/ws/a`, token))
    annAgain(t)
    t.equal((await refused(`${base}/ws/b`, auth('ann'))).status, 429, 'and the limit holds again')
    client.close()
    await closed.wait(idOf(connected))
  })
})

t.test('connectionLimits: heartbeat termination of a peer that never pongs frees its slot', async (t) => {
  const { app, base } = await serve(t, { connectionLimits: { perUser: 1, perIp: 1 }, heartbeat: { interval: 50, timeout: 30 } })
  const closed = closes(app)
  const token = sign({ sub: 'ann' })
  const dead = new Client(`${base}/ws/a`, { headers: { authorization: `Bearer ${token}` }, autoPong: false })
  const connected = await dead.next('connected')
  t.equal(await closed.wait(idOf(connected)), 1006, 'the server terminated it')
  t.equal((await dead.closed).code, 1006, 'the peer saw no close frame')
  const { client } = await connect(`${base}/ws/a`, token)
  t.equal(app.socket.connections().length, 1, 'the same user and IP connect again')
  client.close()
})

t.test('connectionLimits: upgrades that race past the check get 429 or 1013, exactly one stays, no slot leaks', async (t) => {
  const { app, base } = await serve(t, { connectionLimits: { perUser: 1 } })
  const closed = closes(app)
  const token = sign({ sub: 'ann' })
  type Outcome = { open: Client, id: string } | { status: number } | { code: number }
  const attempt = (): Promise<Outcome> => new Promise((resolve) => {
    const client = new Client(`${base}/ws/a`, { headers: { authorization: `Bearer ${token}` } })
    client.ws.on('error', () => {})
    client.opened.catch(() => {})
    client.ws.on('unexpected-response', (_req, res) => { res.resume(); client.ws.terminate(); resolve({ status: res.statusCode ?? 0 }) })
    // A refused one never gets `connected`: its wait ends with the close, which the line below reports.
    client.next('connected').then((m) => resolve({ open: client, id: idOf(m) }), () => {})
    void client.closed.then(({ code }) => resolve({ code }))
  })
  const outcomes = await Promise.all(Array.from({ length: 5 }, attempt))
  const open = outcomes.filter((o): o is { open: Client, id: string } => 'open' in o)
  t.equal(open.length, 1, 'exactly one connection of the user is open')
  for (const o of outcomes) {
    if ('open' in o) continue
    t.ok(('status' in o && o.status === 429) || ('code' in o && o.code === 1013), `the others are refused: ${JSON.stringify(o)}`)
  }
  t.equal(app.socket.connections().length, 1)
  t.equal((await refused(`${base}/ws/a`, auth('ann'))).status, 429, 'the winner holds the slot')
  const winner = open[0]
  if (winner === undefined) return
  winner.open.close()
  await closed.wait(winner.id)
  const again = await connect(`${base}/ws/a`, token)
  t.strictSame(app.socket.connections().map((c) => c.id), [idOf(again.connected)], 'once the winner left, the user connects again: the refused upgrades took no slot')
  const { client } = again
  client.close()
})

t.test('connection limits are off by default: 10 connections of one user succeed', async (t) => {
  const { app, base } = await serve(t)
  const token = sign({ sub: 'ann' })
  const clients = await Promise.all(Array.from({ length: 10 }, () => connect(`${base}/ws/a`, token)))
  t.equal(app.socket.connections().length, 10)
  t.equal((await app.socket.presence('room-a'))[0]?.connections, 10)
  for (const { client } of clients) client.close()
})

t.test('invalid channel names are refused before the registry or the broker see them', async (t) => {
  const invalid: Array<[string, string]> = [
    ['empty', ''],
    ['..', 'room..a'],
    ['.. alone', '..'],
    ['path traversal', '../etc/passwd'],
    ['* wildcard', 'room.*'],
    ['* alone', '*'],
    ['> wildcard', 'room.>'],
    ['# wildcard', 'room/#'],
    ['+ wildcard', 'room/+/x'],
    ['NUL', 'room\u0000'],
    ['newline', 'room\n'],
    ['CRLF', 'room\r\nx'],
    ['tab', 'room\ta'],
    ['DEL', 'room\u007f'],
    ['Cyrillic а look-alike', 'ch\u0430t'],
    ['fullwidth look-alike', '\uff52\uff4f\uff4f\uff4d'],
    ['zero-width space', 'room\u200b'],
    ['right-to-left override', 'room\u202e'],
    ['no-break space', 'room\u00a0a'],
    ['space inside', 'room a'],
    ['leading space', ' room'],
    ['trailing space', 'room ']
  ]
  const huge = 'c'.repeat(256)
  const broker = new RecordingBroker()
  const asked: string[] = []
  const { app, base } = await serve(t, {
    broker,
    authorizeChannel: (_profile, channel) => { asked.push(channel); return true }
  }, (app) => {
    app.get('/ws-raw', app.socket.act('raw', (app, ps) => ps.upgrade((ps.request.query as { name?: string }).name ?? '')))
  })
  const { client, connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  t.after(() => client.close())
  const baseline = { channels: app.socket.channels(), calls: broker.calls.length }
  t.strictSame(baseline.channels.map((c) => c.name), ['room-a'])

  /** Nothing new in the registry, the broker or the authorizer. */
  const untouched = (t: Test): void => {
    t.strictSame(app.socket.channels(), baseline.channels, 'the channel registry is unchanged')
    t.strictSame(broker.calls.slice(baseline.calls), [], 'the broker was never called')
    t.strictSame(asked, [], 'authorizeChannel was never called')
    t.strictSame(app.socket.connections().map((c) => c.channels), [['room-a']], 'the connection is in its home channel only')
  }

  t.test('client `subscribe` → FST_SOCKET_INVALID_CHANNEL', async (t) => {
    for (const [label, name] of invalid) {
      const shown = JSON.stringify(name)
      t.strictSame(await client.request(name, 'subscribe', null, `s-${label}`), {
        channel: name, cmd: 'error', param: { code: 'FST_SOCKET_INVALID_CHANNEL', message: `Invalid channel name: ${shown} ${RULE}` }, ref: `s-${label}`
      }, label)
    }
    // Over 255 characters the envelope itself is refused (its `channel` is at most 255), before any command runs.
    t.strictSame(await client.request(huge, 'subscribe', null, 's-huge'), {
      channel: 'room-a', cmd: 'error', param: { code: 'FST_SOCKET_BAD_REQUEST', message: 'Bad request: /channel must not have more than 255 characters' }, ref: 's-huge'
    }, '256 characters: refused as a malformed envelope')
    untouched(t)
    await alive(t, client, 'room-a')
  })

  t.test('app.socket.broadcast, sendToChannel and join throw FST_SOCKET_INVALID_CHANNEL', async (t) => {
    for (const [label, name] of [...invalid, ['256 characters', huge] as [string, string]]) {
      t.throws(() => app.socket.broadcast(name, { cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL', statusCode: 400 }, `broadcast: ${label}`)
      t.throws(() => app.socket.sendToChannel(['room-a', name], { cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL' }, `sendToChannel: ${label}`)
      await t.rejects(app.socket.join(idOf(connected), name), { code: 'FST_SOCKET_INVALID_CHANNEL' }, `join: ${label}`)
    }
    t.strictSame(client.messages, [], 'nothing was delivered, not even to the valid channel of the list')
    untouched(t)
  })

  t.test('ps.upgrade → 400 before the upgrade', async (t) => {
    for (const [label, name] of [...invalid, ['256 characters', huge] as [string, string]]) {
      const result = await refused(`${base}/ws-raw?name=${encodeURIComponent(name)}`, auth('bob'))
      t.equal(result.status, 400, `${label}: 400`)
      t.equal(result.body.code, 'FST_SOCKET_INVALID_CHANNEL', `${label}: FST_SOCKET_INVALID_CHANNEL`)
    }
    t.equal(app.socket.connections().length, 1, 'no connection was opened')
    untouched(t)
  })

  t.test('the boundary: 255 characters and single dots are valid', async (t) => {
    for (const name of ['c'.repeat(255), 'a.b:c@d/e_f-g']) {
      t.strictSame(await client.request(name, 'subscribe', null, 'ok'), { channel: name, cmd: 'reply', param: { channel: name }, ref: 'ok' })
    }
    t.strictSame(asked.splice(0), ['c'.repeat(255), 'a.b:c@d/e_f-g'], 'valid names reach the authorizer')
    const subscribes = broker.calls.slice(baseline.calls).filter((call) => call[0] === 'subscribe')
    t.strictSame(subscribes, [['subscribe', 'c'.repeat(255)], ['subscribe', 'a.b:c@d/e_f-g']], 'and the broker')
  })
})

t.test('slow upgrade requests (headers dribbled in) are cut by Node\'s headers timeout', async (t) => {
  // As docs/limits.md shows: a server with tight timeouts, checked often, given to Fastify.
  const app = Fastify({
    logger: false,
    serverFactory: (handler) => createServer({ headersTimeout: 300, requestTimeout: 300, connectionsCheckingInterval: 50 }, handler)
  })
  await app.register(forgeSocket, { jwt: { secret: SECRET } })
  room(app)
  t.after(() => app.close())
  const base = await listen(app)
  const { port } = app.server.address() as AddressInfo

  const slow = tcpConnect(port, '127.0.0.1')
  await once(slow, 'connect')
  let answer = ''
  slow.on('data', (chunk: Buffer) => { answer += chunk.toString() })
  const slowClosed = once(slow, 'close')
  slow.write('GET /ws/a HTTP/1.1\r\nHost: x\r\n')

  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  t.pass('a normal client connects while the slow request hangs')
  await slowClosed
  t.match(answer, /^HTTP\/1\.1 408 /, 'Node answered 408 and closed the TCP connection')
  t.equal(app.socket.connections().length, 1, 'the slow request never became a connection')
  await alive(t, client, 'room-a', 'the normal client is unaffected')
  client.close()
})

t.test('connection rates count an IPv6 address by its /64, an IPv4-mapped one as IPv4', async (t) => {
  t.equal(addressBlock('203.0.113.7'), '203.0.113.7')
  t.equal(addressBlock('::ffff:203.0.113.7'), '203.0.113.7')
  t.equal(addressBlock('2001:db8::1'), '2001:db8:0:0::/64')
  t.equal(addressBlock('2001:db8:0:0:ffff:1:2:3'), '2001:db8:0:0::/64', 'the same /64, another host')
  t.equal(addressBlock('2001:DB8:0:1::'), '2001:db8:0:1::/64', 'the next /64')
  t.equal(addressBlock('fe80::1%eth0'), 'fe80:0:0:0::/64')
  t.equal(addressBlock('::1'), '0:0:0:0::/64')
})

t.test('RateByKey: a key refused until its bucket refills, forgotten once full again, and never more than 100,000 kept', async (t) => {
  const rate = new RateByKey(1, 2)
  t.equal(rate.take('a', 0), 0)
  t.equal(rate.take('a', 0), 0)
  t.equal(rate.take('a', 0), 1000, 'ms until the next one')
  t.equal(rate.take('a', 500), 500)
  t.equal(rate.take(null, 0), 0, 'no key, no limit')
  t.equal(new RateByKey(0, 1).take('a', 0), 0, 'rate 0, no limit')
  t.equal(rate.take('b', 20_000), 0, 'a sweep, 10 s on: a is full again and forgotten')
  t.equal(rate.size, 1)
  for (let i = 0; i < 100_010; i++) rate.take(`k${i}`, 20_001)
  t.equal(rate.size, 100_000, 'the oldest keys make room')
})
