// The node's observer (lib/observer.ts), as a tap sees it: one event per connection event, per message in, per
// direct message out and per broadcast; payloads only for a tap that asks; nothing built once the last tap closes.
import t from 'tap'
import { build, closes, connect, listen, sign } from './helpers/server.js'
import { kAdmin } from '../lib/symbols.js'
import type { TapEvent } from '../lib/observer.js'

t.test('a tap sees each connection event and message, with payloads only when it asks', async (t) => {
  const app = await build({ presence: false, authorizeChannel: () => true }, (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
    app.socket.command('echo', { handler: (param) => param })
  })
  t.after(() => app.close())
  const closed = closes(app).wait
  const base = await listen(app)
  const { observer } = app.socket[kAdmin]()
  const plain: TapEvent[] = []
  const full: TapEvent[] = []
  t.equal(observer.tapping, false)
  const closePlain = observer.tap({ payloads: false, event: (e) => plain.push(e) })
  const closeFull = observer.tap({ payloads: true, event: (e) => full.push(e) })
  t.equal(observer.tapping, true)
  t.equal(observer.taps, 2)

  const { client, connected } = await connect(`${base}/ws/room/a`, sign({ sub: 'ann' }))
  const id = (connected.param as { connectionId: string }).connectionId
  t.match(await client.request('room-a', 'echo', { text: 'hi' }, 'r1'), { cmd: 'reply' })
  t.match(await client.request('room-b', 'subscribe', null, 'r2'), { cmd: 'reply' })
  app.socket.broadcast('room-a', { cmd: 'news', param: { n: 1 } })
  await client.next('news')
  t.match(await client.request('room-c', 'echo', 1, 'r3'), { cmd: 'error' })
  client.ws.close(1000)
  t.equal(await closed(id), 1000)

  const types = plain.map((e) => e.type === 'in' || e.type === 'out' ? `${e.type}:${e.cmd}` : e.type)
  t.same(types, ['open', 'out:connected', 'join', 'in:echo', 'out:reply', 'in:subscribe', 'join', 'out:reply', 'broadcast', 'in:echo', 'out:error', 'close', 'leave', 'leave'], types.join(' '))
  t.match(plain.find((e) => e.type === 'open'), { connection: id, user: 'ann', channel: 'room-a', ip: '127.0.0.1' })
  t.match(plain.find((e) => e.type === 'broadcast'), { channel: 'room-a', cmd: 'news', recipients: 1, size: Number })
  t.match(plain.find((e) => e.type === 'in'), { connection: id, channel: 'room-a', cmd: 'echo', size: Number })
  t.match(plain.find((e) => e.type === 'close'), { connection: id, code: 1000 })
  t.notOk(plain.some((e) => 'param' in e), 'no payloads unless asked for')
  t.match(full.find((e) => e.type === 'in'), { cmd: 'echo', param: { text: 'hi' } })
  t.match(full.find((e) => e.type === 'broadcast'), { param: { n: 1 } })
  t.match(full.find((e) => e.type === 'out' && e.cmd === 'error'), { param: { code: 'FST_SOCKET_NOT_SUBSCRIBED' } })
  t.notOk('param' in (full.find((e) => e.type === 'open') as object), 'connection events have no payload')

  closePlain()
  t.equal(observer.tapping, true, 'one tap still open')
  closeFull()
  t.equal(observer.tapping, false, 'none open: nothing is built')
  const count = plain.length
  const again = await connect(`${base}/ws/room/a`, sign({ sub: 'bob' }))
  again.client.ws.close()
  t.equal(plain.length, count, 'a closed tap hears nothing')
})
