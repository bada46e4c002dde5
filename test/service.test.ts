import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, closes, listen, sign, connect, type Client } from './helpers/server.js'
import type { Connection, ForgeSocketOptions, OutboundMessage, Profile } from '../plugin.js'

type Message = Parameters<FastifyInstance['socket']['broadcast']>[1]
// examples/app.ts merges fields into ForgeSocketProfile for the whole project; the profile passed to
// upgradeWithMetadata below is a bare one.

/**
 * An app with three routes (`/ws/room/:room` → `room-<room>` with metadata `{ room }`, `/ws/user` → `user-<id>`,
 * `/ws/anon/:room` with optional auth), listening on port 0, and closes() after `setup`'s hooks, so a test can wait
 * until the server has finished closing a connection (channels left, presence sent). Cross-node tests: broker.test.ts.
 */
async function start (t: Test, options: ForgeSocketOptions = {}, setup?: (app: FastifyInstance) => void) {
  const app = await build(options, (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => {
      const room = ps.requestString('room', true)
      return ps.upgrade(`room-${room}`, { room })
    }))
    app.get('/ws/user', app.socket.act('user', (app, ps) => ps.upgrade(`user-${ps.profile?.id ?? 'nobody'}`)))
    app.get('/ws/anon/:room', app.socket.act('anon', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`), { auth: 'optional' }))
    setup?.(app)
  })
  t.after(() => app.close())
  /** Resolves with the close code once the server has closed the connection and run its onClose hooks. */
  const closedOnServer = closes(app).wait

  const base = await listen(app)
  /** Connects as `user` (anonymous when undefined) and resolves once `connected` arrived. */
  const open = async (path: string, user?: string): Promise<{ client: Client, id: string }> => {
    const { client, connected } = await connect(`${base}${path}`, user === undefined ? undefined : sign({ sub: user }))
    return { client, id: (connected.param as { connectionId: string }).connectionId }
  }
  return { app, base, open, closedOnServer }
}

/** The messages a client received with this cmd and did not consume yet. */
function received (client: Client, cmd: string): OutboundMessage[] {
  return client.messages.filter((m) => m.cmd === cmd)
}

/**
 * Broadcasts a marker to `channel` and waits until `client` has it: every message sent to the client before the
 * marker has arrived by then, so a test can assert that something was NOT sent without sleeping.
 */
async function flush (app: FastifyInstance, channel: string, client: Client): Promise<void> {
  const marker = `marker-${Math.random().toString(36).slice(2)}`
  const seen = client.next(marker)
  app.socket.broadcast(channel, { cmd: marker })
  await seen
}

t.test('broadcast', async (t) => {
  const { app, open } = await start(t)
  const ann = await open('/ws/room/a', 'ann')
  const bob = await open('/ws/room/a', 'bob')
  const carl = await open('/ws/room/b', 'carl')

  t.test('every member gets it, with seq 1, 2, 3 for the channel', async (t) => {
    for (const n of [1, 2, 3]) t.equal(app.socket.broadcast('room-a', { cmd: 'tick', param: { n } }), 2, 'returns the local recipients')
    for (const client of [ann.client, bob.client]) {
      for (const n of [1, 2, 3]) {
        t.strictSame(await client.next('tick'), { channel: 'room-a', cmd: 'tick', param: { n }, seq: n })
      }
    }
    t.equal(app.socket.channels().find((c) => c.name === 'room-a')?.seq, 3)
  })

  t.test('non-members do not get it; each channel has its own seq', async (t) => {
    t.equal(app.socket.broadcast('room-b', { cmd: 'news', param: 'b' }), 1)
    t.strictSame(await carl.client.next('news'), { channel: 'room-b', cmd: 'news', param: 'b', seq: 1 })
    t.same(received(carl.client, 'tick'), [], 'nothing from room-a')
    await flush(app, 'room-a', ann.client)
    t.same(received(ann.client, 'news'), [], 'nothing from room-b')
  })

  t.test('except skips one connection, and that message carries no seq', async (t) => {
    t.equal(app.socket.broadcast('room-a', { cmd: 'typing' }, { except: ann.id }), 1)
    const typing = await bob.client.next('typing')
    t.strictSame(typing, { channel: 'room-a', cmd: 'typing', param: null }, 'param defaults to null, no seq')
    const before = app.socket.channels().find((c) => c.name === 'room-a')?.seq ?? 0
    app.socket.broadcast('room-a', { cmd: 'after' })
    t.equal((await ann.client.next('after')).seq, before + 1, 'the skipped message used no seq number')
    t.equal((await bob.client.next('after')).seq, before + 1)
    t.same(received(ann.client, 'typing'), [], 'the excepted connection did not get it')
  })

  t.test('a channel without members gets nothing and returns 0', async (t) => {
    t.equal(app.socket.broadcast('room-empty', { cmd: 'x' }), 0)
    t.notOk(app.socket.channels().some((c) => c.name === 'room-empty'), 'no channel was created')
  })

  t.test('an invalid channel throws FST_SOCKET_INVALID_CHANNEL', async (t) => {
    for (const channel of ['', 'has space', 'a'.repeat(256), 'semi;colon', 42 as unknown as string]) {
      t.throws(() => app.socket.broadcast(channel, { cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL' }, JSON.stringify(channel).slice(0, 20))
    }
    t.doesNotThrow(() => app.socket.broadcast('a'.repeat(255), { cmd: 'x' }), '255 characters is fine')
    t.doesNotThrow(() => app.socket.broadcast('A-z_0.9:@/x', { cmd: 'x' }), 'every allowed character')
  })

  t.test('a message without a cmd throws FST_SOCKET_INVALID_MESSAGE', async (t) => {
    for (const message of [{ cmd: '' }, { param: 1 }, { cmd: 7 }, null, 'text'] as unknown as Message[]) {
      t.throws(() => app.socket.broadcast('room-a', message), { code: 'FST_SOCKET_INVALID_MESSAGE' }, JSON.stringify(message))
    }
    await flush(app, 'room-a', bob.client)
    t.same(bob.client.messages.filter((m) => !m.cmd.startsWith('marker-')), [], 'nothing was sent')
  })
})

t.test('sendToChannel', async (t) => {
  const { app, open } = await start(t)
  const tab1 = await open('/ws/user', 'ann')
  const tab2 = await open('/ws/user', 'ann')
  const bob = await open('/ws/user', 'bob')

  t.test('user-<id>: every connection of the user gets it', async (t) => {
    t.equal(app.socket.sendToChannel('user-ann', { cmd: 'notification', param: { title: 'Hi' } }), 2)
    for (const tab of [tab1, tab2]) {
      t.strictSame(await tab.client.next('notification'), { channel: 'user-ann', cmd: 'notification', param: { title: 'Hi' }, seq: 1 })
    }
    await flush(app, 'user-bob', bob.client)
    t.same(received(bob.client, 'notification'), [], 'other users do not get it')
  })

  t.test('several channels: each gets its own envelope and seq', async (t) => {
    t.equal(app.socket.sendToChannel(['user-ann', 'user-bob'], { cmd: 'maintenance' }), 3)
    t.strictSame(await tab1.client.next('maintenance'), { channel: 'user-ann', cmd: 'maintenance', param: null, seq: 2 })
    t.strictSame(await tab2.client.next('maintenance'), { channel: 'user-ann', cmd: 'maintenance', param: null, seq: 2 })
    const toBob = await bob.client.next('maintenance')
    t.equal(toBob.channel, 'user-bob')
    t.equal(typeof toBob.seq, 'number')
  })

  t.test('an invalid channel anywhere in the list throws before anything is sent', async (t) => {
    t.throws(() => app.socket.sendToChannel(['user-ann', 'not valid'], { cmd: 'partial' }), { code: 'FST_SOCKET_INVALID_CHANNEL' })
    t.throws(() => app.socket.sendToChannel('user-ann', { cmd: '' }), { code: 'FST_SOCKET_INVALID_MESSAGE' })
    await flush(app, 'user-ann', tab1.client)
    t.same(received(tab1.client, 'partial'), [])
  })

  t.test('an empty list sends nothing', async (t) => {
    t.equal(app.socket.sendToChannel([], { cmd: 'nothing' }), 0)
  })
})

t.test('sendToConnection', async (t) => {
  const { app, open } = await start(t)
  const ann = await open('/ws/room/a', 'ann')
  const bob = await open('/ws/room/a', 'bob')

  t.test('reaches only that connection, on its starting channel, without seq', async (t) => {
    t.equal(app.socket.sendToConnection(ann.id, { cmd: 'kicked', param: { reason: 'spam' } }), true)
    t.strictSame(await ann.client.next('kicked'), { channel: 'room-a', cmd: 'kicked', param: { reason: 'spam' } })
    await flush(app, 'room-a', bob.client)
    t.same(received(bob.client, 'kicked'), [], 'the other member did not get it')
  })

  t.test('message.channel sets the envelope channel', async (t) => {
    t.equal(app.socket.sendToConnection(ann.id, { channel: 'inbox', cmd: 'dm' }), true)
    t.strictSame(await ann.client.next('dm'), { channel: 'inbox', cmd: 'dm', param: null })
  })

  t.test('an unknown id returns false', async (t) => {
    t.equal(app.socket.sendToConnection('no-such-connection', { cmd: 'x' }), false)
  })

  t.test('an invalid message or channel throws', async (t) => {
    t.throws(() => app.socket.sendToConnection(ann.id, { cmd: '' }), { code: 'FST_SOCKET_INVALID_MESSAGE' })
    t.throws(() => app.socket.sendToConnection(ann.id, { channel: 'no spaces', cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL' })
  })
})

t.test('join and leave', async (t) => {
  const { app, open } = await start(t)
  const ann = await open('/ws/room/a', 'ann')
  const bob = await open('/ws/room/b', 'bob')

  t.test('join: broadcasts start arriving, connections(channel) lists it, the others hear user-joined', async (t) => {
    t.equal(await app.socket.join(ann.id, 'room-b'), true)
    t.same(app.socket.connections('room-b').map((c) => c.id).sort(), [ann.id, bob.id].sort())
    t.same(app.socket.connections().find((c) => c.id === ann.id)?.channels, ['room-a', 'room-b'])
    t.strictSame(await bob.client.next('user-joined'), { channel: 'room-b', cmd: 'user-joined', param: { user: 'ann', connectionId: ann.id } })
    t.equal(app.socket.broadcast('room-b', { cmd: 'hello' }), 2)
    t.equal((await ann.client.next('hello')).channel, 'room-b')
    t.same(received(ann.client, 'user-joined'), [], 'the joiner is not told about itself')
  })

  t.test('joining again changes nothing', async (t) => {
    t.equal(await app.socket.join(ann.id, 'room-b'), true)
    t.equal(app.socket.connections('room-b').length, 2)
    await flush(app, 'room-b', bob.client)
    t.same(received(bob.client, 'user-joined'), [], 'no second user-joined')
  })

  t.test('leave: broadcasts stop arriving, the others hear user-left', async (t) => {
    t.equal(await app.socket.leave(ann.id, 'room-b'), true)
    t.same(app.socket.connections('room-b').map((c) => c.id), [bob.id])
    t.strictSame(await bob.client.next('user-left'), { channel: 'room-b', cmd: 'user-left', param: { user: 'ann', connectionId: ann.id } })
    t.equal(app.socket.broadcast('room-b', { cmd: 'gone' }), 1)
    await bob.client.next('gone')
    await flush(app, 'room-a', ann.client)
    t.same(received(ann.client, 'gone'), [], 'no longer a member')
  })

  t.test('leaving a channel one is not in changes nothing', async (t) => {
    t.equal(await app.socket.leave(ann.id, 'room-b'), true)
    t.equal(await app.socket.leave(ann.id, 'room-nowhere'), true)
    t.same(app.socket.connections().find((c) => c.id === ann.id)?.channels, ['room-a'])
  })

  t.test('the last member leaving removes the channel', async (t) => {
    t.equal(await app.socket.leave(bob.id, 'room-b'), true)
    t.same(app.socket.channels().map((c) => c.name), ['room-a'])
    t.same(app.socket.connections('room-b'), [])
    t.equal(app.socket.broadcast('room-b', { cmd: 'void' }), 0)
    t.equal(await app.socket.join(bob.id, 'room-b'), true)
    app.socket.broadcast('room-b', { cmd: 'again' })
    t.equal((await bob.client.next('again')).seq, 1, 'a recreated channel starts its seq again')
  })

  t.test('an unknown id resolves false; an invalid channel throws', async (t) => {
    t.equal(await app.socket.join('no-such-connection', 'room-a'), false)
    t.equal(await app.socket.leave('no-such-connection', 'room-a'), false)
    await t.rejects(app.socket.join(ann.id, 'bad name'), { code: 'FST_SOCKET_INVALID_CHANNEL' })
    await t.rejects(app.socket.leave(ann.id, 'bad name'), { code: 'FST_SOCKET_INVALID_CHANNEL' })
  })
})

t.test('presence', async (t) => {
  t.test('user-joined and user-left go to the others, once per user (two tabs)', async (t) => {
    const { app, open, closedOnServer } = await start(t)
    const bob = await open('/ws/room/a', 'bob')
    const tab1 = await open('/ws/room/a', 'ann')
    t.strictSame(await bob.client.next('user-joined'), { channel: 'room-a', cmd: 'user-joined', param: { user: 'ann', connectionId: tab1.id } })
    await flush(app, 'room-a', tab1.client)
    t.same(received(tab1.client, 'user-joined'), [], 'the joiner is not told about itself')
    t.same(await app.socket.presence('room-a'), [{ user: 'bob', connections: 1 }, { user: 'ann', connections: 1 }])

    const tab2 = await open('/ws/room/a', 'ann')
    t.same(await app.socket.presence('room-a'), [{ user: 'bob', connections: 1 }, { user: 'ann', connections: 2 }])
    t.has(app.socket.channels(), [{ name: 'room-a', connections: 3, users: 2 }])
    await flush(app, 'room-a', bob.client)
    t.same(received(bob.client, 'user-joined'), [], 'the second tab is not announced')
    await flush(app, 'room-a', tab1.client)
    t.same(received(tab1.client, 'user-joined'), [], 'nor told to the first tab')

    tab2.client.close()
    t.equal(await closedOnServer(tab2.id), 1000)
    t.same(await app.socket.presence('room-a'), [{ user: 'bob', connections: 1 }, { user: 'ann', connections: 1 }])
    await flush(app, 'room-a', bob.client)
    t.same(received(bob.client, 'user-left'), [], 'closing one tab of two is not announced')

    tab1.client.close()
    await closedOnServer(tab1.id)
    t.strictSame(await bob.client.next('user-left'), { channel: 'room-a', cmd: 'user-left', param: { user: 'ann', connectionId: tab1.id } })
    t.same(await app.socket.presence('room-a'), [{ user: 'bob', connections: 1 }])
  })

  t.test('presence: false sends no user-joined or user-left', async (t) => {
    const { app, open, closedOnServer } = await start(t, { presence: false })
    const bob = await open('/ws/room/a', 'bob')
    const ann = await open('/ws/room/a', 'ann')
    await app.socket.join(ann.id, 'room-b')
    await app.socket.leave(ann.id, 'room-b')
    ann.client.close()
    await closedOnServer(ann.id)
    await flush(app, 'room-a', bob.client)
    t.same(received(bob.client, 'user-joined'), [])
    t.same(received(bob.client, 'user-left'), [])
  })

  t.test('anonymous connections (optional auth) have no presence', async (t) => {
    const { app, open, closedOnServer } = await start(t)
    const bob = await open('/ws/room/a', 'bob')
    const anon = await open('/ws/anon/a')
    t.equal(app.socket.connections().find((c) => c.id === anon.id)?.profileId, null)
    t.same(await app.socket.presence('room-a'), [{ user: 'bob', connections: 1 }])
    t.has(app.socket.channels(), [{ name: 'room-a', connections: 2, users: 1 }])
    t.equal(app.socket.broadcast('room-a', { cmd: 'both' }), 2, 'the anonymous connection still gets broadcasts')
    await anon.client.next('both')
    anon.client.close()
    await closedOnServer(anon.id)
    await flush(app, 'room-a', bob.client)
    t.same(received(bob.client, 'user-joined'), [])
    t.same(received(bob.client, 'user-left'), [])
  })

  t.test('presence of an unknown channel is empty', async (t) => {
    const { app } = await start(t)
    t.same(await app.socket.presence('room-nowhere'), [])
  })
})

t.test('disconnect', async (t) => {
  const { app, open, closedOnServer } = await start(t)

  t.test('the client sees the code and the reason', async (t) => {
    const ann = await open('/ws/room/a', 'ann')
    t.equal(app.socket.disconnect(ann.id, 4000, 'bye'), true)
    t.same(await ann.client.closed, { code: 4000, reason: 'bye' })
    t.equal(await closedOnServer(ann.id), 4000)
    t.equal(app.socket.disconnect(ann.id), false, 'gone afterwards')
  })

  t.test('the default is 1000 with no reason', async (t) => {
    const ann = await open('/ws/room/a', 'ann')
    t.equal(app.socket.disconnect(ann.id), true)
    t.same(await ann.client.closed, { code: 1000, reason: '' })
  })

  t.test('disconnecting twice sends one close frame', async (t) => {
    const ann = await open('/ws/room/a', 'ann')
    t.equal(app.socket.disconnect(ann.id, 4003, 'first'), true)
    t.equal(app.socket.disconnect(ann.id, 4000, 'second'), true)
    t.same(await ann.client.closed, { code: 4003, reason: 'first' })
  })

  t.test('codes a peer may not receive throw FST_SOCKET_INVALID_CLOSE_CODE', async (t) => {
    const ann = await open('/ws/room/a', 'ann')
    for (const code of [1005, 1006, 1015, 1002, 1004, 1012, 999, 0, 3000, 4000.5, 5000, Number.NaN]) {
      t.throws(() => app.socket.disconnect(ann.id, code), { code: 'FST_SOCKET_INVALID_CLOSE_CODE' }, String(code))
    }
    t.throws(() => app.socket.disconnect('no-such-connection', 1006), { code: 'FST_SOCKET_INVALID_CLOSE_CODE' }, 'checked before the lookup')
    t.equal(app.socket.connections().filter((c) => c.id === ann.id).length, 1, 'still open')
    t.equal(app.socket.disconnect(ann.id, 1001), true)
    t.equal((await ann.client.closed).code, 1001)
  })

  t.test('an unknown id returns false', async (t) => {
    t.equal(app.socket.disconnect('no-such-connection', 4000, 'bye'), false)
  })

  t.test('a reason over 123 bytes is cut, never inside a character', async (t) => {
    const cases = [
      ['x'.repeat(200), 'x'.repeat(123)],
      ['x'.repeat(123), 'x'.repeat(123)],
      ['é'.repeat(100), 'é'.repeat(61)],
      ['x' + 'é'.repeat(100), 'x' + 'é'.repeat(61)],
      ['€'.repeat(50), '€'.repeat(41)],
      ['😀'.repeat(40), '😀'.repeat(30)],
      ['xx' + '😀'.repeat(40), 'xx' + '😀'.repeat(30)]
    ]
    for (const [reason, expected] of cases) {
      const ann = await open('/ws/room/a', 'ann')
      app.socket.disconnect(ann.id, 4000, reason)
      const closed = await ann.client.closed
      t.ok(Buffer.byteLength(closed.reason) <= 123, `${Buffer.byteLength(closed.reason)} bytes`)
      t.equal(closed.reason, expected)
    }
  })
})

t.test('status, channels and connections', async (t) => {
  const { app, open, closedOnServer } = await start(t)
  const before = Date.now()

  t.test('an idle node', async (t) => {
    t.match(app.socket.status(), { node: String, closing: false, connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 })
    t.same(app.socket.channels(), [])
    t.same(app.socket.connections(), [])
    t.same(app.socket.connections('room-a'), [])
  })

  t.test('counts and details', async (t) => {
    const ann = await open('/ws/room/a', 'ann')
    const bob = await open('/ws/room/b', 'bob')
    t.match(app.socket.status(), { connections: 2, channels: 2, messagesIn: 0, messagesOut: 2 })
    t.same(app.socket.channels(), [
      { name: 'room-a', connections: 1, users: 1, seq: 0 },
      { name: 'room-b', connections: 1, users: 1, seq: 0 }
    ])
    const info = app.socket.connections('room-a')
    t.equal(info.length, 1)
    const [annInfo] = info
    t.match(annInfo, { id: ann.id, profileId: 'ann', channels: ['room-a'], metadata: { room: 'a' }, messagesIn: 0, messagesOut: 1, bytesIn: 0 })
    const started = Date.parse(annInfo?.started ?? '')
    t.equal(new Date(started).toISOString(), annInfo?.started, 'started is an ISO date')
    t.ok(started >= before - 1000 && started <= Date.now(), 'started when it connected')
    const bytesOut = annInfo?.bytesOut ?? 0
    t.ok(bytesOut > 0, 'connected counted in bytesOut')

    const frame = JSON.stringify({ channel: 'room-a', cmd: 'ping', param: null, ref: 'p1' })
    const pong = ann.client.next('pong')
    ann.client.send(frame)
    t.match(await pong, { cmd: 'pong', ref: 'p1' })
    app.socket.broadcast('room-a', { cmd: 'counted', param: 'x'.repeat(100) })
    await ann.client.next('counted')
    const after = app.socket.connections().find((c) => c.id === ann.id)
    t.match(after, { messagesIn: 1, messagesOut: 3, bytesIn: Buffer.byteLength(frame) })
    t.ok((after?.bytesOut ?? 0) > bytesOut + 100, 'bytesOut grew')
    t.match(app.socket.status(), { messagesIn: 1, messagesOut: 4 })
    t.same(app.socket.channels().find((c) => c.name === 'room-a')?.seq, 1)
    t.same(app.socket.connections('room-b').map((c) => c.id), [bob.id])

    // The node's counts are its connections' own, summed: an `error` answer counts like any message, and a
    // connection's messages still count after it has gone.
    const refused = ann.client.next('error')
    ann.client.send('not json')
    await refused
    t.match(app.socket.status(), { messagesIn: 2, messagesOut: 5 })
    ann.client.close()
    await closedOnServer(ann.id)
    t.match(app.socket.status(), { connections: 1, messagesIn: 2, messagesOut: 5 }, 'counted once, after ann left too')
  })
})

t.test('onOpen and onClose hooks', async (t) => {
  t.test('onOpen gets the connection; onClose gets the close code of every kind of close', async (t) => {
    const opened: Connection[] = []
    const { app, open, closedOnServer } = await start(t, {}, (app) => {
      app.socket.onOpen((conn) => { opened.push(conn) })
    })
    const ann = await open('/ws/room/a', 'ann')
    await ann.client.request('room-a', 'ping', null)
    t.equal(opened.length, 1, 'called once the connection is open')
    t.match(opened[0], { id: ann.id, profileId: 'ann', home: 'room-a', metadata: { room: 'a' } })
    t.equal(opened[0]?.started.getTime(), opened[0]?.startedAt, '`started` is the time it opened, as a Date')

    ann.client.close()
    t.equal(await closedOnServer(ann.id), 1000, 'client close')

    const bob = await open('/ws/room/a', 'bob')
    app.socket.disconnect(bob.id, 4000, 'bye')
    t.equal(await closedOnServer(bob.id), 4000, 'server disconnect')

    const carl = await open('/ws/room/a', 'carl')
    carl.client.ws.terminate()
    t.equal(await closedOnServer(carl.id), 1006, 'client gone without a close frame')
    t.equal(opened.length, 3)
  })

  t.test('onClose after the heartbeat terminates a silent peer', async (t) => {
    const { open, closedOnServer } = await start(t, { heartbeat: { interval: 50, timeout: 30 } })
    const ann = await open('/ws/room/a', 'ann')
    const socket = (ann.client.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
    socket.pause()
    t.equal(await closedOnServer(ann.id), 1006, 'terminated: no close frame')
    socket.resume()
    t.equal((await ann.client.closed).code, 1006)
  })

  t.test('an onClose hook that throws breaks nothing else', async (t) => {
    const { app, open, closedOnServer } = await start(t, {}, (app) => {
      app.socket.onClose(() => { throw new Error('hook failed') })
      app.socket.onClose(async () => { throw new Error('async hook failed') })
    })
    const bob = await open('/ws/room/a', 'bob')
    const ann = await open('/ws/room/a', 'ann')
    ann.client.close()
    t.equal(await closedOnServer(ann.id), 1000, 'the hooks registered after it still run')
    t.match(await bob.client.next('user-left'), { param: { user: 'ann' } })
    t.same(app.socket.connections().map((c) => c.id), [bob.id], 'the connection is gone')
    const carl = await open('/ws/room/a', 'carl')
    t.equal(app.socket.broadcast('room-a', { cmd: 'still-works' }), 2)
    await carl.client.next('still-works')
  })

  t.test('an onOpen hook that throws closes that connection with 1011', async (t) => {
    let fail = true
    const { app, open, closedOnServer } = await start(t, {}, (app) => {
      app.socket.onOpen(async () => { if (fail) throw new Error('setup failed') })
    })
    const ann = await open('/ws/room/a', 'ann')
    t.same(await ann.client.closed, { code: 1011, reason: 'internal error' })
    t.equal(await closedOnServer(ann.id), 1011)
    fail = false
    const bob = await open('/ws/room/a', 'bob')
    t.match(await bob.client.request('room-a', 'ping', null), { cmd: 'pong' })
    t.same(app.socket.connections().map((c) => c.id), [bob.id])
  })
})

t.test('a slow consumer is closed with 4008 and the others keep receiving', async (t) => {
  const { app, open, closedOnServer } = await start(t, { sendBufferLimit: 1024 })
  const slow = await open('/ws/room/a', 'slow')
  const fast = await open('/ws/room/a', 'fast')
  const socket = (slow.client.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
  socket.pause()

  const param = 'x'.repeat(16 * 1024)
  let delivered = 2
  let sent = 0
  // The paused client's kernel buffers fill up after a few MiB; from then on its send buffer grows and it is closed.
  while (delivered === 2 && sent < 5000) {
    const got = fast.client.next('load')
    delivered = app.socket.broadcast('room-a', { cmd: 'load', param })
    sent++
    await got
  }
  t.equal(delivered, 1, `the slow consumer was dropped after ${sent} messages`)
  t.same(app.socket.connections().find((c) => c.id === slow.id)?.channels, ['room-a'], 'it stays registered until its close completes')

  const more = fast.client.next('more')
  t.equal(app.socket.broadcast('room-a', { cmd: 'more' }), 1)
  t.match(await more, { cmd: 'more' }, 'the other member keeps receiving')

  socket.resume()
  t.equal(await closedOnServer(slow.id), 4008)
  t.equal((await slow.client.closed).code, 4008)
  t.same(app.socket.connections().map((c) => c.id), [fast.id])
})

t.test('a slow consumer that never reads up to its close frame is dropped after heartbeat.timeout', async (t) => {
  const { app, open, closedOnServer } = await start(t, { sendBufferLimit: 1024, heartbeat: { interval: 60_000, timeout: 100 } })
  const slow = await open('/ws/room/a', 'slow')
  const socket = (slow.client.ws as unknown as { _socket: { pause: () => void } })._socket
  socket.pause()
  const param = 'x'.repeat(16 * 1024)
  let sent = 0
  while (app.socket.broadcast('room-a', { cmd: 'load', param }) === 1 && sent < 5000) {
    sent++
    // Each send waits for the socket to take what it can, so the kernel buffers fill before ours grows.
    await new Promise((resolve) => setImmediate(resolve))
  }
  const started = Date.now()
  // It never resumes: without the grace, ws would hold it (and its send buffer) for 30 s.
  t.equal(await closedOnServer(slow.id), 1006, 'dropped without a closing handshake')
  t.ok(Date.now() - started < 5000, 'well before ws\'s own 30 s')
  t.same(app.socket.connections(), [])
})

t.test('no leaks once every client is gone', async (t) => {
  const { app, open, closedOnServer } = await start(t)
  const clients = [
    await open('/ws/room/a', 'ann'),
    await open('/ws/room/a', 'ann'),
    await open('/ws/room/b', 'bob'),
    await open('/ws/user', 'bob'),
    await open('/ws/anon/a')
  ]
  const [first, , third] = clients
  if (first === undefined || third === undefined) throw new Error('unreachable')
  await app.socket.join(first.id, 'room-c')
  await app.socket.join(third.id, 'room-c')
  t.equal(app.socket.status().channels, 4)
  for (const { client } of clients) client.close()
  for (const { id } of clients) await closedOnServer(id)
  t.same(app.socket.channels(), [])
  t.same(app.socket.connections(), [])
  t.same(await app.socket.presence('room-a'), [])
  t.match(app.socket.status(), { connections: 0, channels: 0 })
})

t.test("Project Forge's spellings: app.socket.upgrade and upgradeWithMetadata", async (t) => {
  const { app, open } = await start(t, {}, (app) => {
    app.get('/ws/seed', app.socket.act('seed', (app, ps) => app.socket.upgrade(`user-${ps.profile?.id ?? 'nobody'}`, ps.profile, ps.logger)))
    app.get('/ws/seed-meta', app.socket.act('seed-meta', (app, ps) => app.socket.upgradeWithMetadata('lobby', { id: 'someone-else' } as unknown as Profile, { plan: 'pro' })))
  })
  const ann = await open('/ws/seed', 'ann')
  t.match(app.socket.connections('user-ann'), [{ id: ann.id, profileId: 'ann', metadata: {} }])
  const bob = await open('/ws/seed-meta', 'bob')
  t.match(app.socket.connections('lobby'), [{ id: bob.id, profileId: 'someone-else', metadata: { plan: 'pro' } }], 'the profile passed in wins')
  t.throws(() => app.socket.upgrade('lobby'), { code: 'FST_SOCKET_OUTSIDE_ACT' })
  t.throws(() => app.socket.upgradeWithMetadata('lobby', null, {}), { code: 'FST_SOCKET_OUTSIDE_ACT' })
})
