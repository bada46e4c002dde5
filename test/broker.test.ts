import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import forgeSocket, { MemoryBroker, MemoryHub, type BrokerMessage, type ForgeSocketOptions } from '../plugin.js'
import { flush } from './helpers/cluster.js'
import { RecordingBroker } from './helpers/broker.js'
import { build, closes, idOf, listen, room, serve, sign, connect, type Client, SECRET } from './helpers/server.js'
import { LogSink } from './helpers/logs.js'

/** One node: an app on a shared MemoryHub, listening. */
async function node (t: Test, hub: MemoryHub): Promise<{ app: FastifyInstance, base: string }> {
  return await serve(t, { broker: new MemoryBroker(hub) })
}

/** Connects a user to a node's room and returns the client and its connection id. */
async function join (base: string, roomName: string, user: string): Promise<{ client: Client, id: string }> {
  const { client, connected } = await connect(`${base}/ws/${roomName}`, sign({ sub: user }))
  return { client, id: idOf(connected) }
}

t.test('memory broker: two apps on one hub', async (t) => {
  t.test('a broadcast on A reaches a member on B exactly once, and A\'s own member once', async (t) => {
    const hub = new MemoryHub()
    const a = await node(t, hub)
    const b = await node(t, hub)
    const ann = await join(a.base, 'lobby', 'ann')
    const bob = await join(b.base, 'lobby', 'bob')
    // Presence crosses nodes too; it also tells us B has joined and subscribed.
    t.same((await ann.client.next('user-joined')).param, { user: 'bob', connectionId: bob.id }, 'ann sees bob join on B')

    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'hello', param: { n: 1 } }), 1, 'counts the local deliveries')
    const expected = { channel: 'room-lobby', cmd: 'hello', param: { n: 1 }, seq: 1 }
    t.same(await ann.client.next('hello'), expected)
    t.same(await bob.client.next('hello'), expected, 'numbered by the receiving node')
    await flush(a.app, 'room-lobby', ann.client, bob.client)
    t.notOk(ann.client.messages.some((m) => m.cmd === 'hello'), 'no second copy on A')
    t.notOk(bob.client.messages.some((m) => m.cmd === 'hello'), 'no second copy on B')

    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'not-bob' }, { except: bob.id }), 1, 'A\'s own member, not bob')
    t.same(await ann.client.next('not-bob'), { channel: 'room-lobby', cmd: 'not-bob', param: null }, 'no seq when someone is skipped')
    await flush(a.app, 'room-lobby', ann.client, bob.client)
    t.notOk(bob.client.messages.some((m) => m.cmd === 'not-bob'), '`except` is honoured on the other node')

    b.app.socket.sendToChannel(['room-lobby'], { cmd: 'from-b' })
    t.equal((await ann.client.next('from-b')).channel, 'room-lobby', 'and the other way round')

    ann.client.close()
    bob.client.close()
    await Promise.all([ann.client.closed, bob.client.closed])
  })

  t.test('sendToConnection, join, leave and disconnect on A reach a connection on B', async (t) => {
    const hub = new MemoryHub()
    const a = await node(t, hub)
    const b = await node(t, hub)
    const bob = await join(b.base, 'home', 'bob')

    t.equal(a.app.socket.sendToConnection(bob.id, { cmd: 'direct', param: 1 }), false, 'false: not on A')
    t.same(await bob.client.next('direct'), { channel: 'room-home', cmd: 'direct', param: 1 }, 'on the connection\'s home channel')
    a.app.socket.sendToConnection(bob.id, { channel: 'elsewhere', cmd: 'direct-2' })
    t.strictSame(await bob.client.next('direct-2'), { channel: 'elsewhere', cmd: 'direct-2', param: null }, 'or the channel given')

    t.equal(await a.app.socket.join(bob.id, 'extra'), false, 'join: false on A')
    t.same(b.app.socket.connections('extra').map((c) => c.id), [bob.id], 'bob is in the channel on B')
    t.equal(a.app.socket.broadcast('extra', { cmd: 'in-extra' }), 0, 'A has no member of its own')
    t.equal((await bob.client.next('in-extra')).channel, 'extra', 'the channel now reaches bob through the hub')

    t.equal(await a.app.socket.leave(bob.id, 'extra'), false, 'leave: false on A')
    t.same(b.app.socket.connections('extra'), [], 'bob left the channel on B')
    t.same(b.app.socket.channels().map((c) => c.name), ['room-home'], 'B dropped the channel')
    t.notOk(hub.nodes.get(b.app.socket.nodeId)?.channels.has('extra'), 'B unsubscribed from it')

    t.equal(a.app.socket.sendToConnection('no-such-connection', { cmd: 'lost' }), false, 'an unknown id is no error')
    t.equal(await a.app.socket.join('no-such-connection', 'extra'), false)
    t.equal(await a.app.socket.leave('no-such-connection', 'extra'), false)
    t.equal(a.app.socket.disconnect('no-such-connection'), false)

    const closed = closes(b.app)
    t.equal(a.app.socket.disconnect(bob.id, 4000, 'bye'), false, 'disconnect: false on A')
    t.same(await bob.client.closed, { code: 4000, reason: 'bye' })
    t.equal(await closed.wait(bob.id), 4000, 'closed on B')
    t.same(b.app.socket.channels(), [], 'B released the channel')
  })

  t.test('a channel message is not delivered to a node with no members in it', async (t) => {
    const hub = new MemoryHub()
    const a = await node(t, hub)
    const b = await node(t, hub)
    const ann = await join(a.base, 'only-a', 'ann')
    const bob = await join(b.base, 'only-b', 'bob')
    const nodeB = hub.nodes.get(b.app.socket.nodeId)
    if (nodeB === undefined) throw new Error('B is not on the hub')
    const seen: BrokerMessage[] = []
    const deliver = nodeB.deliver
    nodeB.deliver = (message) => { seen.push(message); deliver(message) }

    t.same([...nodeB.channels], ['room-only-b'], 'B is subscribed to its own channel only')
    a.app.socket.broadcast('room-only-a', { cmd: 'for-a' })
    await ann.client.next('for-a')
    t.same(seen, [], 'B was not given the message')
    t.equal(b.app.socket.status().messagesOut, 1, 'B sent nothing but bob\'s `connected`')

    a.app.socket.broadcast('room-only-b', { cmd: 'for-b' })
    await bob.client.next('for-b')
    t.match(seen, [{ type: 'channel', channel: 'room-only-b', origin: a.app.socket.nodeId }], 'B gets messages for its channel')
    t.equal(b.app.socket.status().messagesOut, 2, 'and counts the delivery of another node\'s message, once')
    t.equal(a.app.socket.status().messagesOut, 2, 'which A does not count: it wrote nothing (ann\'s `connected` and for-a)')

    ann.client.close()
    bob.client.close()
    await Promise.all([ann.client.closed, bob.client.closed])
  })

  t.test('after close, the hub has no nodes', async (t) => {
    const hub = new MemoryHub()
    const a = await build({ broker: new MemoryBroker(hub) })
    const b = await build({ broker: new MemoryBroker(hub) })
    await Promise.all([a.ready(), b.ready()])
    t.same([...hub.nodes.keys()].sort(), [a.socket.nodeId, b.socket.nodeId].sort(), 'each app is a node')
    await a.close()
    t.same([...hub.nodes.keys()], [b.socket.nodeId])
    await b.close()
    t.equal(hub.nodes.size, 0)
  })

  t.test('apps with the default broker do not share anything', async (t) => {
    const a = await serve(t)
    const b = await serve(t, { broker: 'memory' })
    const ann = await join(a.base, 'lobby', 'ann')
    const bob = await join(b.base, 'lobby', 'bob')
    a.app.socket.broadcast('room-lobby', { cmd: 'only-a' })
    await ann.client.next('only-a')
    await flush(b.app, 'room-lobby', bob.client)
    t.notOk(bob.client.messages.some((m) => m.cmd === 'only-a'), 'B never heard of it')
    ann.client.close()
    bob.client.close()
    await Promise.all([ann.client.closed, bob.client.closed])
  })

  t.test('a MemoryBroker used before start or after close does nothing', async (t) => {
    const hub = new MemoryHub()
    const broker = new MemoryBroker(hub)
    broker.subscribe('x')
    broker.unsubscribe('x')
    broker.publish({ type: 'join', origin: 'n', connectionId: 'c', channel: 'x' })
    broker.close()
    t.equal(hub.nodes.size, 0)
    const seen: BrokerMessage[] = []
    broker.start({ nodeId: 'n1', deliver: (m) => seen.push(m), log: console, counts: () => ({ connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 }), presence: () => [] })
    t.same(broker.setPresence('x', 'ann', 1), { change: 'joined', users: 1 })
    broker.close()
    t.same(hub.presence.size, 0, 'a node that closes takes its presence with it')
    broker.subscribe('x')
    t.same(broker.setPresence('x', 'ann', 1), { change: null, users: 0 }, 'after close, presence is not recorded')
    broker.close()
    t.equal(hub.nodes.size, 0, 'closing twice is harmless')
    t.same(seen, [])
  })
})

/** An app with a RecordingBroker, logging into a LogSink, listening. */
async function custom (t: Test, options: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string, broker: RecordingBroker, logs: LogSink, closed: ReturnType<typeof closes> }> {
  const broker = new RecordingBroker()
  const logs = new LogSink()
  // Not serve(): no presence interval 0 here, and a logger.
  const app = Fastify({ logger: { level: 'info', stream: logs.stream } })
  await app.register(forgeSocket, { jwt: { secret: SECRET }, broker, ...options })
  room(app)
  t.after(() => app.close())
  return { app, base: await listen(app), broker, logs, closed: closes(app) }
}

t.test('a custom broker', async (t) => {
  t.test('is started with the node id, subscribed by the first member, unsubscribed by the last, closed with the app', async (t) => {
    const { app, base, broker, closed } = await custom(t)
    t.same(broker.calls, [['start', app.socket.nodeId]], 'started at register')

    const ann = await join(base, 'a', 'ann')
    t.same(broker.only('subscribe'), [['subscribe', 'room-a']], 'the first member subscribes the node')
    const bob = await join(base, 'a', 'bob')
    t.same(broker.only('subscribe'), [['subscribe', 'room-a']], 'the second does not')

    ann.client.close()
    await closed.wait(ann.id)
    t.same(broker.only('unsubscribe'), [], 'a member is left')
    bob.client.close()
    await closed.wait(bob.id)
    t.same(broker.only('unsubscribe'), [['unsubscribe', 'room-a']], 'the last member unsubscribes the node')

    await app.close()
    t.same(broker.calls.at(-1), ['close'], 'closed by app.close()')
    t.equal(broker.only('close').length, 1, 'once')
  })

  t.test('gets every broadcast, tagged with the node id', async (t) => {
    const { app, base, broker } = await custom(t)
    const ann = await join(base, 'a', 'ann')
    broker.calls.length = 0
    app.socket.broadcast('room-a', { cmd: 'news', param: { n: 1 } })
    app.socket.broadcast('room-a', { cmd: 'news-2' }, { except: ann.id })
    app.socket.disconnect('remote-connection', 4000, 'bye')
    t.same(broker.only('publish'), [
      ['publish', { type: 'channel', origin: app.socket.nodeId, channel: 'room-a', message: { channel: 'room-a', cmd: 'news', param: { n: 1 } }, except: undefined }],
      ['publish', { type: 'channel', origin: app.socket.nodeId, channel: 'room-a', message: { channel: 'room-a', cmd: 'news-2', param: null }, except: ann.id }],
      ['publish', { type: 'disconnect', origin: app.socket.nodeId, connectionId: 'remote-connection', code: 4000, reason: 'bye' }]
    ])
    t.equal((await ann.client.next('news')).seq, 1, 'delivered locally without a round trip')
    ann.client.close()
    await ann.client.closed
  })

  for (const failure of ['throw', 'reject'] as const) {
    t.test(`a publish that fails (${failure}) is logged and local delivery goes on`, async (t) => {
      const { app, base, broker, logs } = await custom(t)
      const ann = await join(base, 'a', 'ann')
      broker.publishFails = failure
      t.equal(app.socket.broadcast('room-a', { cmd: 'news' }), 1)
      t.match(await ann.client.next('news'), { cmd: 'news', seq: 1 }, 'the local member got it, numbered')
      const line = await logs.next('broker publish failed')
      t.equal(line.level, 50, 'an error')
      t.match(line, { type: 'channel', err: { message: 'broker down' } })

      t.equal(await app.socket.join('remote', 'room-b'), false, 'a remote join resolves even so')
      t.equal(app.socket.sendToConnection('remote', { cmd: 'x' }), false)
      t.equal(app.socket.disconnect('remote'), false, 'and so does a remote disconnect')
      t.equal((await ann.client.request('room-a', 'ping', null)).cmd, 'pong', 'the connection is unharmed')
      t.ok(logs.lines.filter((l) => l.msg === 'broker publish failed').length >= 2)
      ann.client.close()
      await ann.client.closed
    })
  }

  t.test('a subscribe that fails closes the new connection with 1011', async (t) => {
    const { base, broker, logs, closed } = await custom(t)
    broker.failing.add('room-bad')
    const { client, connected } = await connect(`${base}/ws/bad`, sign({ sub: 'ann' }))
    t.same(await client.closed, { code: 1011, reason: 'internal error' })
    t.equal(await closed.wait(idOf(connected)), 1011)
    t.match(await logs.next('connection setup failed'), { level: 50, err: { message: 'subscribe failed' } })
  })

  t.test('an unsubscribe that fails still releases the connection and runs onClose hooks', async (t) => {
    const { app, base, broker, logs, closed } = await custom(t)
    // Both fail: neither failure stops the other unsubscribe or the close path.
    broker.failingUnsubscribe.add('room-a')
    broker.failingUnsubscribe.add('second')
    const ann = await join(base, 'a', 'ann')
    t.equal(await app.socket.join(ann.id, 'second'), true)
    ann.client.close()
    t.equal(await closed.wait(ann.id), 1000, 'the onClose hook ran')
    t.same(app.socket.channels(), [], 'no channel keeps the closed connection')
    t.same(broker.only('unsubscribe').map((c) => c[1]).sort(), ['room-a', 'second'], 'every channel was unsubscribed')
    t.match(await logs.next((l) => l.level === 50), { err: { message: 'unsubscribe failed' } })
  })

  t.test('what the broker delivers reaches this node\'s connections', async (t) => {
    const { app, base, broker, logs } = await custom(t)
    const ann = await join(base, 'a', 'ann')
    const other = 'another-node'
    const message = (cmd: string): BrokerMessage => ({ type: 'channel', origin: other, channel: 'room-a', message: { channel: 'room-a', cmd, param: null } })

    broker.deliver({ ...message('echo'), origin: app.socket.nodeId })
    broker.deliver(message('remote'))
    t.same(await ann.client.next('remote'), { channel: 'room-a', cmd: 'remote', param: null, seq: 1 })
    t.notOk(ann.client.messages.some((m) => m.cmd === 'echo'), 'its own messages, echoed back, are dropped')
    broker.deliver({ type: 'channel', origin: other, channel: 'room-a', message: { channel: 'room-a', cmd: 'skipped', param: null }, except: ann.id })
    broker.deliver({ type: 'channel', origin: other, channel: 'room-nobody', message: { channel: 'room-nobody', cmd: 'nobody', param: null } })

    broker.deliver({ type: 'connection', origin: other, connectionId: ann.id, message: { cmd: 'direct', param: 2 } })
    t.same(await ann.client.next('direct'), { channel: 'room-a', cmd: 'direct', param: 2 })
    broker.deliver({ type: 'connection', origin: other, connectionId: 'unknown', message: { cmd: 'lost', param: null } })

    broker.deliver({ type: 'join', origin: other, connectionId: ann.id, channel: 'extra' })
    t.same(app.socket.connections('extra').map((c) => c.id), [ann.id], 'remote join')
    t.match(broker.calls.at(-1), ['subscribe', 'extra'])
    broker.deliver({ type: 'leave', origin: other, connectionId: ann.id, channel: 'extra' })
    t.same(app.socket.connections('extra'), [], 'remote leave')
    broker.deliver({ type: 'join', origin: other, connectionId: 'unknown', channel: 'extra' })
    t.same(app.socket.channels().map((c) => c.name), ['room-a'], 'a join for an unknown connection changes nothing')

    broker.failing.add('broken')
    broker.deliver({ type: 'join', origin: other, connectionId: ann.id, channel: 'broken' })
    t.match(await logs.next('remote join failed'), { level: 50, err: { message: 'subscribe failed' } })

    // Everything above that was meant for nobody arrived before this, if at all.
    const check = ann.client.request('room-a', 'ping', null)
    t.equal((await check).cmd, 'pong')
    t.notOk(ann.client.messages.some((m) => ['skipped', 'nobody', 'lost'].includes(m.cmd)), 'nothing stray was delivered')

    broker.deliver({ type: 'disconnect', origin: other, connectionId: 'unknown', code: 4000, reason: 'x' })
    broker.deliver({ type: 'disconnect', origin: other, connectionId: ann.id, code: 4000, reason: 'remote bye' })
    t.same(await ann.client.closed, { code: 4000, reason: 'remote bye' })
  })
})
