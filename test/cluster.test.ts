// The cluster layer on its own: a hub and a broker that records what it is asked, with no server. Each operation
// does its local half with the hub and publishes the rest; what another node sends is done with the same hub methods.
import t from 'tap'
import { Hub } from '../lib/hub.js'
import { Cluster } from '../lib/cluster.js'
import { errors } from '../lib/errors.js'
import type { Broker, BrokerMessage, PresenceUpdate } from '../lib/broker/broker.js'
import type { ResolvedPresence } from '../lib/options.js'
import { recordedConnection, silentLog } from './helpers/connections.js'
import { RecordingBroker } from './helpers/broker.js'

const presence: ResolvedPresence = { announce: () => 'events', interval: 0, maxUsers: 1000 }

function cluster (broker: Broker = new RecordingBroker()): { hub: Hub, cluster: Cluster } {
  const hub = new Hub()
  return { hub, cluster: new Cluster('node-a', hub, broker, presence, silentLog) }
}

t.test('broadcast delivers here and publishes once; the same message from another node is delivered by the hub', async (t) => {
  const broker = new RecordingBroker()
  const { hub, cluster: node } = cluster(broker)
  const a = recordedConnection('a', 'ann')
  hub.add(a.conn)
  await node.join(a.conn, 'room')
  t.same(broker.only('subscribe'), [['subscribe', 'room']], 'the first member subscribes the node')
  const message = { channel: 'room', cmd: 'hi', param: null }
  t.equal(node.broadcast(message), 1)
  t.same(broker.only('publish').map(([, m]) => m).filter((m) => m.type === 'channel'), [{ type: 'channel', origin: 'node-a', channel: 'room', message, except: undefined }])
  node.receive({ type: 'channel', origin: 'node-b', channel: 'room', message: { channel: 'room', cmd: 'from-b', param: 1 } })
  node.receive({ type: 'channel', origin: 'node-a', channel: 'room', message: { channel: 'room', cmd: 'echo', param: 1 } })
  t.same(a.socket.sent.filter((m) => m.cmd !== 'user-joined').map((m) => m.cmd), ['hi', 'from-b'], 'its own echo is not delivered twice')
})

t.test('an operation on a connection of another node is published; the one it reaches does it locally', async (t) => {
  const broker = new RecordingBroker()
  const { hub, cluster: node } = cluster(broker)
  t.equal(node.sendToConnection('far', { cmd: 'note' }), false)
  t.equal(await node.joinConnection('far', 'room'), false)
  t.equal(await node.leaveConnection('far', 'room'), false)
  t.equal(node.disconnect('far', 4000, 'bye'), false)
  t.equal(node.disconnectUser('ann', 4000, 'everywhere'), 0)
  const published = broker.only('publish').map(([, m]) => m)
  t.same(published.map((m) => m.type), ['connection', 'join', 'leave', 'disconnect', 'disconnect-user'])
  t.same(published[0], { type: 'connection', origin: 'node-a', connectionId: 'far', message: { channel: undefined, cmd: 'note', param: null } })

  // On the node that has the connection, each arrives as the same local call.
  const here = recordedConnection('far', 'ann', 'user-ann')
  hub.add(here.conn)
  for (const message of published) node.receive({ ...message, origin: 'node-b' } as BrokerMessage)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(here.socket.sent[0], { channel: 'user-ann', cmd: 'note', param: null })
  t.same(here.socket.closed, { code: 4000, reason: 'bye' })
  t.same(broker.only('subscribe'), [['subscribe', 'room']], 'the remote join subscribed this node')
  t.same(broker.only('unsubscribe'), [['unsubscribe', 'room']], 'and the remote leave ended it')
})

t.test('a failed subscription leaves the channel again, and the join rejects', async (t) => {
  const broker = new RecordingBroker()
  broker.failing.add('room')
  const { hub, cluster: node } = cluster(broker)
  const a = recordedConnection('a', 'ann')
  hub.add(a.conn)
  await t.rejects(node.join(a.conn, 'room'), /subscribe failed/)
  t.equal(hub.channel('room'), undefined)
  t.same(a.conn.channels, new Set())
})

t.test('presence: the broker\'s word on who is present decides what the members hear', async (t) => {
  const broker = new RecordingBroker() as RecordingBroker & { setPresence: (channel: string, user: string, n: number) => PresenceUpdate }
  const updates: Array<[string, number]> = []
  broker.setPresence = (_channel, user, n) => {
    updates.push([user, n])
    // Ann is on another node already: her connection here changes nothing for the cluster.
    return { change: user === 'ann' ? null : n > 0 ? 'joined' : 'left', users: 2 }
  }
  const { hub, cluster: node } = cluster(broker)
  const watcher = recordedConnection('w', 'wes')
  const ann = recordedConnection('a', 'ann')
  hub.add(watcher.conn)
  hub.add(ann.conn)
  await node.join(ann.conn, 'room')
  await node.join(watcher.conn, 'room')
  await node.leave(watcher.conn, 'room')
  await node.stop()
  t.same(updates, [['ann', 1], ['wes', 1], ['wes', 0]])
  t.same(ann.socket.sent.map((m) => [m.cmd, (m.param as { user: string }).user]), [['user-joined', 'wes'], ['user-left', 'wes']])
  t.same(watcher.socket.sent, [], 'nobody was told of ann, who was present already')
})

t.test('status is this node alone when the others cannot be asked', async (t) => {
  const broker = new RecordingBroker() as RecordingBroker & { nodes: () => never }
  broker.nodes = () => { throw new Error('redis is away') }
  const { cluster: node } = cluster(broker)
  const status = await node.status()
  t.equal(status.nodes.length, 1)
  t.match(status, { broker: 'ok', connections: 0, messagesIn: 0, messagesOut: 0, nodes: [{ node: 'node-a' }] })
})

t.test('start with waitForBroker: a broker that stays degraded is closed, and the start refuses', async (t) => {
  const broker = new RecordingBroker()
  broker.health = 'degraded'
  const { cluster: node } = cluster(broker)
  await t.rejects(node.start(20), errors.FST_SOCKET_BROKER_UNAVAILABLE)
  t.same(broker.only('close'), [['close']])
  t.same(broker.only('start'), [['start', 'node-a']])
  t.same(broker.host?.counts(), { connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 })
})
