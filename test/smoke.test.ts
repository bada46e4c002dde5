import t from 'tap'
import { build, listen, sign, connect } from './helpers/server.js'

t.test('connects, gets connected, broadcast reaches member', async (t) => {
  const app = await build({}, (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`, { room: 1 })))
  })
  t.after(() => app.close())
  const base = await listen(app)
  const { client, connected } = await connect(`${base}/ws/room/a`, sign({ sub: 'ann' }))
  t.equal(connected.cmd, 'connected')
  t.same(connected.param, { connectionId: app.socket.connections()[0]?.id, channels: ['room-a'], dedupe: { window: 120000, scope: 'user' } })
  app.socket.broadcast('room-a', { cmd: 'hello', param: { x: 1 } })
  const m = await client.next('hello')
  t.same(m, { channel: 'room-a', cmd: 'hello', param: { x: 1 }, seq: 1 })
  client.close()
  await client.closed
})
