// One contract, run against every broker: two Fastify nodes sharing a MemoryHub, then two sharing a real Redis
// (a redis-server this file spawns on a free port). What a user checks: clients on two nodes, talking.
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { MemoryBroker, MemoryHub, RedisBroker, type Broker } from '../plugin.js'
import { flush, until } from './helpers/cluster.js'
import { serve, sign, connect, type Client } from './helpers/server.js'
import { Redis6, RedisProcess, requireRedis } from './helpers/redis.js'

/** Makes the brokers of one test's nodes: all of them share one hub, or one Redis. */
type BrokerFactory = (t: Test) => Promise<() => Broker>

interface Node { app: FastifyInstance, base: string }

async function node (t: Test, broker: Broker): Promise<Node> {
  return await serve(t, { broker }, (app) => {
    app.socket.command('say', { handler: (param, { channel }) => { app.socket.broadcast(channel, { cmd: 'said', param }) } })
  })
}

/** Connects `user` to a room and waits until the join (subscription and presence included) is done. */
async function join (base: string, room: string, user: string): Promise<{ client: Client, id: string }> {
  const { client, connected } = await connect(`${base}/ws/${room}`, sign({ sub: user }))
  // Answered only after the connection's join, its broker subscription and its presence announcement.
  await client.request(`room-${room}`, 'ping', null)
  return { client, id: (connected.param as { connectionId: string }).connectionId }
}



function sorted<T extends { user: string }> (list: T[]): T[] {
  return [...list].sort((a, b) => a.user.localeCompare(b.user))
}

function contract (name: string, factory: BrokerFactory): void {
  t.test(`${name}: the broker contract`, async (t) => {
    t.test('a chat message sent on B reaches A exactly once; `except` holds across nodes', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const ann = await join(a.base, 'lobby', 'ann')
      const bob = await join(b.base, 'lobby', 'bob')

      bob.client.send({ channel: 'room-lobby', cmd: 'say', param: 'hi from B' })
      t.match(await ann.client.next('said'), { channel: 'room-lobby', param: 'hi from B' }, 'reached A')
      t.match(await bob.client.next('said'), { param: 'hi from B' }, 'and B')
      b.app.socket.broadcast('room-lobby', { cmd: 'not-ann' }, { except: ann.id })
      await flush(b.app, 'room-lobby', ann.client, bob.client)
      t.notOk(ann.client.messages.some((m) => m.cmd === 'said' || m.cmd === 'not-ann'), 'no second copy, nothing excepted')
      t.notOk(bob.client.messages.some((m) => m.cmd === 'said'), 'no echo on B')
      ann.client.close()
      bob.client.close()
    })

    t.test('messages one node publishes to a channel arrive in the order published', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const bob = await join(b.base, 'lobby', 'bob')
      for (let i = 0; i < 300; i++) a.app.socket.broadcast('room-lobby', { cmd: 'n', param: i })
      const got: number[] = []
      for (let i = 0; i < 300; i++) got.push((await bob.client.next('n')).param as number)
      t.same(got, Array.from({ length: 300 }, (_, i) => i))
      bob.client.close()
    })

    t.test('sendToConnection, join, leave and disconnect by id reach a connection on the other node', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const bob = await join(b.base, 'home', 'bob')
      t.equal(a.app.socket.sendToConnection(bob.id, { cmd: 'direct', param: 1 }), false, 'false: not on A')
      t.same(await bob.client.next('direct'), { channel: 'room-home', cmd: 'direct', param: 1 })

      t.equal(await a.app.socket.join(bob.id, 'extra'), false)
      await until(() => b.app.socket.connections('extra').length === 1)
      // The subscription follows the join; a message sent on B after it has crossed no node and is ordered.
      await bob.client.request('room-home', 'ping', null)
      await until(async () => (await a.app.socket.presence('extra')).length === 1)
      a.app.socket.broadcast('extra', { cmd: 'in-extra' })
      t.match(await bob.client.next('in-extra'), { channel: 'extra' }, 'the join took effect on B')
      t.equal(await a.app.socket.leave(bob.id, 'extra'), false)
      await until(() => b.app.socket.connections('extra').length === 0)
      t.pass('the leave took effect on B')

      t.equal(a.app.socket.disconnect(bob.id, 4000, 'bye from A'), false)
      t.same(await bob.client.closed, { code: 4000, reason: 'bye from A' })
    })

    t.test('presence spans both nodes: listed everywhere, announced once per user, gone with the last connection', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const carl = await join(a.base, 'lobby', 'carl')
      const ann1 = await join(a.base, 'lobby', 'ann')
      t.same((await carl.client.next('user-joined')).param, { user: 'ann', connectionId: ann1.id })
      const bob = await join(b.base, 'lobby', 'bob')
      t.same((await carl.client.next('user-joined')).param, { user: 'bob', connectionId: bob.id }, 'B\'s user is announced on A')
      const ann2 = await join(b.base, 'lobby', 'ann')
      const everyone = [{ user: 'ann', connections: 2 }, { user: 'bob', connections: 1 }, { user: 'carl', connections: 1 }]
      t.same(sorted(await a.app.socket.presence('room-lobby')), everyone, 'A lists the members of both nodes')
      t.same(sorted(await b.app.socket.presence('room-lobby')), everyone, 'so does B')
      t.same(sorted(a.app.socket.localPresence('room-lobby')), [{ user: 'ann', connections: 1 }, { user: 'carl', connections: 1 }], 'localPresence: A only')

      await flush(b.app, 'room-lobby', carl.client, bob.client)
      t.notOk(carl.client.messages.some((m) => m.cmd === 'user-joined'), 'ann\'s second connection, on B, is not announced')
      t.notOk(bob.client.messages.some((m) => m.cmd === 'user-joined'), 'nor to bob, who came after her first')
      ann1.client.close()
      await until(async () => (await b.app.socket.presence('room-lobby')).some((p) => p.user === 'ann' && p.connections === 1))
      await flush(a.app, 'room-lobby', carl.client, bob.client)
      t.notOk([...carl.client.messages, ...bob.client.messages].some((m) => m.cmd === 'user-left'), 'ann is still on B: no user-left')
      ann2.client.close()
      t.same((await carl.client.next('user-left')).param, { user: 'ann', connectionId: ann2.id }, 'her last connection, on B, is announced on A')
      t.same(sorted(await a.app.socket.presence('room-lobby')), everyone.slice(1))
      carl.client.close()
      bob.client.close()
    })

    t.test('disconnectUser closes the user\'s connections on every node and no one else\'s', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const annA = await join(a.base, 'lobby', 'ann')
      const annB = await join(b.base, 'lobby', 'ann')
      const annB2 = await join(b.base, 'other', 'ann')
      const bob = await join(b.base, 'lobby', 'bob')
      t.equal(a.app.socket.disconnectUser('ann', 4000, 'signed out everywhere'), 1, 'one was on A')
      const expected = { code: 4000, reason: 'signed out everywhere' }
      t.same(await Promise.all([annA.client.closed, annB.client.closed, annB2.client.closed]), [expected, expected, expected])
      t.equal((await bob.client.request('room-lobby', 'ping', null)).cmd, 'pong', 'bob is still connected')
      t.equal(a.app.socket.disconnectUser('nobody'), 0)
      t.throws(() => a.app.socket.disconnectUser('ann', 1005), { code: 'FST_SOCKET_INVALID_CLOSE_CODE' })
      bob.client.close()
    })

    t.test('clusterStatus counts every node; a node that closes leaves it and takes its users with it', async (t) => {
      const make = await factory(t)
      const a = await node(t, make())
      const b = await node(t, make())
      const ann = await join(a.base, 'lobby', 'ann')
      const bob = await join(b.base, 'lobby', 'bob')
      const bob2 = await join(b.base, 'lobby', 'bob')
      await until(async () => (await a.app.socket.clusterStatus()).connections === 3)
      const status = await a.app.socket.clusterStatus()
      t.same(status.nodes.map((n) => n.node).sort(), [a.app.socket.nodeId, b.app.socket.nodeId].sort(), 'both nodes')
      t.match(status, { broker: 'ok', connections: 3 })
      t.match(status.nodes.find((n) => n.node === b.app.socket.nodeId), { connections: 2, channels: 1 })

      await b.app.close()
      const left = (await ann.client.next('user-left')).param as { user: string, connectionId: string }
      t.equal(left.user, 'bob', 'B\'s users left as it shut down')
      t.ok([bob.id, bob2.id].includes(left.connectionId), 'named by whichever of his connections closed last')
      const goingAway = { code: 1001, reason: 'server shutting down' }
      t.same(await Promise.all([bob.client.closed, bob2.client.closed]), [goingAway, goingAway])
      t.same(await a.app.socket.presence('room-lobby'), [{ user: 'ann', connections: 1 }])
      t.same((await a.app.socket.clusterStatus()).nodes.map((n) => n.node), [a.app.socket.nodeId], 'only A is left')
      ann.client.close()
    })
  })
}

contract('memory', async () => {
  const hub = new MemoryHub()
  return () => new MemoryBroker(hub)
})

if (requireRedis(t)) {
  contract('redis', async (t) => {
    const redis = await RedisProcess.start(t)
    return () => new RedisBroker({ redis: redis.url })
  })
  // Bring your own Redis: every node's broker duplicates one client of the app's ioredis 6 (never connected itself).
  contract('redis, on a client of ioredis 6', async (t) => {
    const redis = await RedisProcess.start(t)
    const client = new Redis6(redis.url, { lazyConnect: true, commandTimeout: 1000 })
    client.on('error', () => {})
    t.after(() => client.disconnect())
    return () => new RedisBroker({ redis: client })
  })
}
