import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { Socket, type TokenProvider } from '../lib/client/index.js'
import { demoLogin, freePort, startDemo, type DemoProcess } from './helpers/demo-process.js'
import { inState, within } from './helpers/client-state.js'

// The Node client against the real demo server (`node dist/examples/server.js`), killed and restarted on the same
// port: the client reconnects and delivers what was sent while the server was down, in order, exactly once.

const SECRET = 'client-restart-test-secret-long-enough'
const ROOM = 'chat-room-lobby'
const QUEUED = 20

interface ChatClient {
  socket: Socket
  /** The texts of every chat-message received, in order, and who sent each. */
  texts: string[]
  senders: string[]
  /** The client's debug lines (`closed 1006`, `retry in 42 ms`, …). */
  debug: string[]
  /** How many times the token provider was called (once per connection attempt). */
  tokenCalls: () => number
  /** Resolves once `check(texts)` holds. */
  until: (check: (texts: string[]) => boolean) => Promise<void>
}

function chatClient (t: Test, url: string, token: TokenProvider): ChatClient {
  const texts: string[] = []
  const senders: string[] = []
  const debug: string[] = []
  const waiters = new Set<{ check: (texts: string[]) => boolean, resolve: () => void }>()
  let calls = 0
  const socket = new Socket({
    url,
    token: () => { calls++; return token() },
    WebSocket,
    reconnect: { initialDelay: 50, maxDelay: 500 },
    debug: true,
    logger: (line) => debug.push(line)
  })
  t.after(() => socket.close())
  socket.on('chat-message', (message) => {
    const param = message.param as { from: string, text: string }
    texts.push(param.text)
    senders.push(param.from)
    for (const waiter of waiters) {
      if (waiter.check(texts)) {
        waiters.delete(waiter)
        waiter.resolve()
      }
    }
  })
  return {
    socket,
    texts,
    senders,
    debug,
    tokenCalls: () => calls,
    until: (check) => check(texts) ? Promise.resolve() : new Promise((resolve) => waiters.add({ check, resolve }))
  }
}

/**
 * ann (the sender) and bob (the observer) chat in the lobby; the server goes down with `signal`; ann sends
 * QUEUED messages while it is down; the server comes back on the same port; both reconnect and everything ann
 * queued reaches bob and ann's own echo once each, in order, before what ann sends the moment she is back.
 */
async function restart (t: Test, signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
  const port = await freePort()
  const demos: DemoProcess[] = []
  // Registered first so it runs even if starting the demo or anything after it fails.
  t.after(async () => { for (const demo of demos) await demo.kill('SIGKILL') })
  demos.push(await startDemo({ port, secret: SECRET }))
  const first = demos[0] as DemoProcess
  const url = `${first.wsUrl}/ws/chat/lobby`
  const annToken = await demoLogin(first.url, 'ann')
  const bobToken = await demoLogin(first.url, 'bob')

  // Broadcasts are not stored: bob must be back in the room before ann's queue is flushed, or he misses it. So
  // ann's token provider (which the client calls before every attempt) holds her reconnection until then.
  let hold: Promise<void> = Promise.resolve()
  const bob = chatClient(t, url, () => bobToken)
  await within(inState(bob.socket, 'open'), 'bob to connect')
  const ann = chatClient(t, url, async () => { await hold; return annToken })
  await within(inState(ann.socket, 'open'), 'ann to connect')
  const before = { ann: ann.socket.connectionId, bob: bob.socket.connectionId }
  t.type(before.ann, 'string', 'ann has a connection id')
  t.type(before.bob, 'string', 'bob has a connection id')

  t.equal(ann.socket.send(ROOM, 'chat-message', { text: 'before' }), true, 'sent at once while open')
  await within(Promise.all([ann.until((x) => x.includes('before')), bob.until((x) => x.includes('before'))]), '"before" to arrive')

  let release = (): void => {}
  hold = new Promise((resolve) => { release = resolve })

  const exit = await within(demos[0]!.kill(signal), `the demo to exit after ${signal}`)
  if (signal === 'SIGKILL') t.equal(exit.signal, 'SIGKILL', 'the server was killed')
  else {
    t.equal(exit.code, 0, 'the server shut down cleanly')
    t.ok(first.logs.some((line) => line.msg === 'shutting down'), 'the server logged its shutdown')
  }
  await within(Promise.all([inState(ann.socket, 'reconnecting'), inState(bob.socket, 'reconnecting')]), 'both clients to notice')
  const closeLine = signal === 'SIGKILL' ? 'closed 1006' : 'closed 1001'
  for (const [name, client] of [['ann', ann], ['bob', bob]] as const) {
    t.ok(client.debug.some((line) => line.includes(closeLine)), `${name} saw the server close (${closeLine})`)
    const retries = client.debug.map((line) => /retry in (\d+) ms/.exec(line)?.[1]).filter((d) => d !== undefined).map(Number)
    t.ok(retries.length > 0 && retries.every((d) => d >= 0 && d <= 500), `${name} retries with jittered delays within maxDelay: ${retries.join(', ')}`)
  }

  const texts = Array.from({ length: QUEUED }, (_, i) => `queued ${i + 1}`)
  const sent = texts.map((text) => ann.socket.send(ROOM, 'chat-message', { text }))
  t.same(sent, texts.map(() => false), 'sends while down are queued, not sent')
  t.equal(ann.socket.queued, QUEUED, `${QUEUED} messages wait in the queue`)
  t.equal(ann.socket.state, 'reconnecting', 'ann is still reconnecting')

  demos.push(await startDemo({ port, secret: SECRET }))
  await within(inState(bob.socket, 'open'), 'bob to reconnect')
  t.not(bob.socket.connectionId, before.bob, 'bob has a new connection')

  // What ann sends the moment she is open again must come after her queue, not jump ahead of it.
  const annOpen = new Promise<void>((resolve) => {
    const off = ann.socket.onStateChange((state) => {
      if (state !== 'open') return
      off()
      ann.socket.send(ROOM, 'chat-message', { text: 'after' })
      resolve()
    })
  })
  release()
  await within(annOpen, 'ann to reconnect')
  t.ok(ann.tokenCalls() >= 2 && bob.tokenCalls() >= 2, 'the token providers were asked again for the new connections')
  t.equal(ann.socket.state, 'open')
  t.not(ann.socket.connectionId, before.ann, 'ann has a new connection')
  t.equal(ann.socket.queued, 0, 'the queue is empty once open')

  const expected = ['before', ...texts, 'after']
  const done = (x: string[]): boolean => x.includes('after') && x.length >= expected.length
  await within(Promise.all([ann.until(done), bob.until(done)]), 'every queued message and "after" to arrive')
  t.same(bob.texts, expected, 'bob got every queued message once, in order, then "after"')
  t.same(ann.texts, expected, 'ann\'s echo has every queued message once, in order, then "after"')
  t.ok(bob.senders.every((from) => from === 'ann'), 'all from ann')
  t.ok(ann.debug.some((line) => line.includes(`flush ${QUEUED} queued`)), 'ann flushed the queue in one go')
}

t.test('SIGKILL: the server dies, comes back on the same port; queued messages arrive once, in order', async (t) => {
  await restart(t, 'SIGKILL')
})

t.test('SIGTERM: graceful shutdown closes with 1001; clients reconnect with jitter and deliver the queue', async (t) => {
  await restart(t, 'SIGTERM')
})
