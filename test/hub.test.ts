// The hub on its own: this node's connections and channels, and delivery to them, with no broker and no server.
import t from 'tap'
import { Hub } from '../lib/hub.js'
import { ConnectionState } from '../lib/connection.js'
import { recordedConnection } from './helpers/connections.js'

/** A hub with ann's connection `a` and bob's `b`, both in 'room'. */
function annAndBobInRoom (): { hub: Hub, a: ReturnType<typeof recordedConnection>, b: ReturnType<typeof recordedConnection> } {
  const hub = new Hub()
  const a = recordedConnection('a', 'ann')
  const b = recordedConnection('b', 'bob')
  for (const { conn } of [a, b]) {
    hub.add(conn)
    hub.join(conn, 'room')
  }
  return { hub, a, b }
}

t.test('deliver writes one envelope to every member but the one excepted, numbering what all of them get', async (t) => {
  const { hub, a, b } = annAndBobInRoom()
  t.equal(hub.deliver('room', { channel: 'room', cmd: 'hi', param: 1 }, undefined), 2)
  t.equal(hub.deliver('room', { channel: 'room', cmd: 'typing', param: null }, 'a'), 1)
  t.equal(hub.deliver('room', { channel: 'room', cmd: 'hi', param: 2 }, undefined), 2)
  t.same(a.socket.sent, [{ channel: 'room', cmd: 'hi', param: 1, seq: 1 }, { channel: 'room', cmd: 'hi', param: 2, seq: 2 }])
  t.same(b.socket.sent.map((m) => [m.cmd, m.seq]), [['hi', 1], ['typing', undefined], ['hi', 2]])
  t.equal(hub.deliver('nobody-here', { channel: 'nobody-here', cmd: 'hi', param: null }, undefined), 0)
})

t.test('join and leave say what changed: the channel\'s first and last member, and each user\'s', async (t) => {
  const hub = new Hub()
  const ann1 = recordedConnection('a1', 'ann').conn
  const ann2 = recordedConnection('a2', 'ann').conn
  const anon = recordedConnection('x', null).conn
  t.match(hub.join(ann1, 'room'), { firstOrLast: true, userFirstOrLast: true })
  t.match(hub.join(ann2, 'room'), { firstOrLast: false, userFirstOrLast: false })
  t.equal(hub.join(ann2, 'room'), null, 'a member already')
  t.match(hub.join(anon, 'room'), { firstOrLast: false, userFirstOrLast: false })
  t.same(hub.presence('room'), [{ user: 'ann', connections: 2 }])
  t.match(hub.leave(ann1, 'room'), { firstOrLast: false, userFirstOrLast: false })
  t.match(hub.leave(ann2, 'room'), { firstOrLast: false, userFirstOrLast: true })
  t.equal(hub.leave(ann2, 'room'), null, 'not a member')
  t.match(hub.leave(anon, 'room'), { firstOrLast: true })
  t.equal(hub.channel('room'), undefined, 'the channel goes with its last member')
  t.same(hub.presence('room'), [])
})

t.test('a connection that has closed is not joined anywhere', async (t) => {
  const hub = new Hub()
  const { conn } = recordedConnection('a', 'ann')
  conn.state = ConnectionState.CLOSED
  t.equal(hub.join(conn, 'room'), null)
  t.equal(hub.channels().length, 0)
})

t.test('send defaults to the home channel; close and closeUser close only what is on this node', async (t) => {
  const hub = new Hub()
  const a = recordedConnection('a', 'ann', 'user-ann')
  const b = recordedConnection('b', 'ann', 'user-ann')
  const c = recordedConnection('c', 'cid', 'user-cid')
  for (const { conn } of [a, b, c]) hub.add(conn)
  t.equal(hub.send(a.conn, { cmd: 'note', param: { n: 1 } }), true)
  t.equal(hub.send(a.conn, { channel: 'elsewhere', cmd: 'note' }), true)
  t.same(a.socket.sent, [{ channel: 'user-ann', cmd: 'note', param: { n: 1 } }, { channel: 'elsewhere', cmd: 'note', param: null }])
  t.equal(hub.close('nobody', 4000, 'x'), false)
  t.equal(hub.closeUser('ann', 4000, 'signed out'), 2)
  t.equal(hub.closeUser('ann', 4000, 'again'), 0, 'connections already closing are not counted twice')
  t.same(a.socket.closed, { code: 4000, reason: 'signed out' })
  t.equal(c.socket.closed, null)
  t.equal(hub.close('c', 1000, 'done'), true)
  t.same(c.socket.closed, { code: 1000, reason: 'done' })
})

t.test('counts are the connections\' own, and outlive the connections', async (t) => {
  const { hub, a, b } = annAndBobInRoom()
  hub.deliver('room', { channel: 'room', cmd: 'hi', param: null }, undefined)
  a.conn.messagesIn = 3
  t.same(hub.counts(), { connections: 2, channels: 1, messagesIn: 3, messagesOut: 2 })
  hub.leave(a.conn, 'room')
  hub.remove(a.conn)
  hub.remove(a.conn)
  t.same(hub.counts(), { connections: 1, channels: 1, messagesIn: 3, messagesOut: 2 }, 'a closed connection\'s messages still count, once')
  t.same(hub.channels(), [{ name: 'room', connections: 1, users: 1, seq: 1 }])
  t.same(hub.connections('room').map((info) => info.id), ['b'])
  t.same(hub.connections().map((info) => info.id), ['b'])
  t.same(hub.connections('none'), [])
  t.same([...hub.presenceEntries()], [['room', 'bob', 1]])
})
