// Presence that can't be turned into an amplifier: changes gathered per channel and interval, a cap on the users
// of a channel that is announced to, per-channel modes, and rate limits on what makes presence traffic
// (subscribe churn of one connection, connections opened in a loop).
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { presenceChanges } from '../lib/client/presence.js'
import { PresenceAnnouncer } from '../lib/presence.js'
import forgeSocket, { MemoryBroker, MemoryHub, type ForgeSocketOptions } from '../plugin.js'
import { flush } from './helpers/cluster.js'
import { LogSink } from './helpers/logs.js'
import { SECRET, closes, connect, idOf, listen, refused, room, sign, type Client } from './helpers/server.js'

/** A room route, clients that may subscribe to anything, and a way to wait for a connection's close on the server. */
async function start (t: Test, options: ForgeSocketOptions, logs?: LogSink): Promise<{ app: FastifyInstance, base: string, open: (user: string, room?: string) => Promise<Client>, gone: (client: Client) => Promise<void> }> {
  // Not helpers/server.ts's serve: these tests run presence with its default interval unless they say otherwise.
  const app = Fastify({ logger: logs === undefined ? false : { level: 'warn', stream: logs.stream } })
  await app.register(forgeSocket, { jwt: { secret: SECRET }, authorizeChannel: () => true, ...options })
  room(app)
  const closed = closes(app)
  t.after(() => app.close())
  const base = await listen(app)
  const ids = new Map<Client, string>()
  const open = async (user: string, name = 'a'): Promise<Client> => {
    const { client, connected } = await connect(`${base}/ws/${name}`, sign({ sub: user }))
    ids.set(client, idOf(connected))
    t.after(() => client.close())
    return client
  }
  /** Closes a client and resolves once the server has run its close path (its leaves included). */
  const gone = async (client: Client): Promise<void> => {
    client.close()
    await closed.wait(ids.get(client) as string)
  }
  return { app, base, open, gone }
}

/** The users in the presence messages a client received, in order, as `+ann` / `-ann`. */
function heard (client: Client): string[] {
  return client.messages.flatMap((m) => {
    const changes = presenceChanges(m)
    return changes === null ? [] : [...changes.joins.map((j) => `+${j.user}`), ...changes.leaves.map((l) => `-${l.user}`)]
  })
}

/** Waits until `client` heard that `user` joined (any form). */
async function heardJoin (client: Client, user: string): Promise<void> {
  await client.next((m) => presenceChanges(m)?.joins.some((j) => j.user === user) === true)
}

t.test('a user who joins and leaves inside one interval is not announced at all', async (t) => {
  const { open, gone } = await start(t, { presence: { interval: 400 } })
  const bob = await open('bob')
  const dan = await open('dan')
  await heardJoin(bob, 'dan') // the first round is out: the next one starts with ann
  const ann = await open('ann')
  await gone(ann)
  const carl = await open('carl')
  await heardJoin(bob, 'carl')
  t.same(heard(bob), [], 'bob heard neither ann\'s join nor her leave (what he heard was taken by the waits)')
  t.notOk(dan.messages.some((m) => JSON.stringify(m).includes('"ann"')), 'nor did dan')
  await gone(carl)
})

t.test('changes of one interval go out together, each user once', async (t) => {
  const { open } = await start(t, { presence: { interval: 300 } })
  const bob = await open('bob')
  const dan = await open('dan')
  await heardJoin(bob, 'dan')
  // Two tabs of ann and one of carl, inside one round.
  await Promise.all([open('ann'), open('ann'), open('carl')])
  await heardJoin(bob, 'carl')
  await heardJoin(bob, 'ann')
  t.same(heard(bob), [], 'one user-joined each: the second tab is not announced')
  t.notOk(dan.messages.some((m) => m.cmd === 'user-joined' && (m.param as { user: string }).user === 'dan'), 'nobody is told about themselves')
})

t.test('a connection toggling subscribe/unsubscribe in a channel makes no presence traffic', async (t) => {
  const { open } = await start(t, { presence: { interval: 400 } })
  const bob = await open('bob', 'lobby')
  const carl = await open('carl', 'lobby')
  await heardJoin(bob, 'carl')
  const toggler = await open('mallory', 'elsewhere')
  for (let i = 0; i < 20; i++) {
    await toggler.request('room-lobby', 'subscribe', null)
    await toggler.request('room-lobby', 'unsubscribe', null)
  }
  const dan = await open('dan', 'lobby')
  await heardJoin(bob, 'dan')
  t.same(heard(bob), [], 'mallory was never announced')
  t.notOk(carl.messages.some((m) => JSON.stringify(m).includes('mallory')), 'to anyone')
  t.equal(dan.messages.filter((m) => m.cmd === 'user-joined').length, 0, 'dan, who joined last, heard nothing yet')
})

t.test('a channel of more than maxUsers users announces nothing; presence() still lists everyone', async (t) => {
  const { app, open, gone } = await start(t, { presence: { interval: 0, maxUsers: 2 } })
  const ann = await open('ann')
  const bob = await open('bob')
  await heardJoin(ann, 'bob')
  const carl = await open('carl')
  await flush(app, 'room-a', ann, bob, carl)
  t.same(heard(ann), [], 'carl, the third user, was not announced')
  t.same((await app.socket.presence('room-a')).map((p) => p.user).sort(), ['ann', 'bob', 'carl'])
  await gone(carl)
  // Two users again: at the cap, not over it.
  await gone(bob)
  await ann.next((m) => m.cmd === 'user-left' && (m.param as { user: string }).user === 'bob')
  t.pass('announced again once the channel is back at the cap')
})

t.test('the cap counts the users of every node: a channel over it across two nodes announces nothing on either', async (t) => {
  const hub = new MemoryHub()
  const a = await start(t, { broker: new MemoryBroker(hub), presence: { interval: 0, maxUsers: 2 } })
  const b = await start(t, { broker: new MemoryBroker(hub), presence: { interval: 0, maxUsers: 2 } })
  const ann = await a.open('ann')
  await b.open('bob')
  await heardJoin(ann, 'bob')
  // A has one user, B one: carl, on A, makes three in the channel (two on A alone, at the cap).
  const carl = await a.open('carl')
  await flush(b.app, 'room-a', ann, carl)
  t.same(heard(ann), [], 'carl was not announced')
  t.same((await a.app.socket.presence('room-a')).map((p) => p.user).sort(), ['ann', 'bob', 'carl'])
})

t.test('a user who leaves one node and is back on another within a round is never heard as gone', async (t) => {
  // Each node gathers on its own timer. Eve's join starts B's round before ann's leave starts A's, so B's round
  // (with ann's return) goes out first; without the check at sending time, A's round would then say ann left.
  const hub = new MemoryHub()
  const a = await start(t, { broker: new MemoryBroker(hub), presence: { interval: 300 } })
  const b = await start(t, { broker: new MemoryBroker(hub), presence: { interval: 300 } })
  const bob = await a.open('bob')
  const ann = await a.open('ann')
  await heardJoin(bob, 'ann')
  bob.messages.length = 0
  await b.open('eve')
  await a.gone(ann)
  await b.open('ann')
  await a.open('dan') // in A's round with ann's leave
  await heardJoin(bob, 'dan')
  t.notOk(heard(bob).includes('-ann'), `bob heard ${heard(bob).join(' ')}`)
  t.same((await a.app.socket.presence('room-a')).map((p) => p.user).sort(), ['ann', 'bob', 'dan', 'eve'], 'and ann is present')
})

t.test('diff mode: one presence-diff per interval with every join and leave, to every member', async (t) => {
  const { open, gone } = await start(t, { presence: { announce: 'diff', interval: 300 } })
  const bob = await open('bob')
  const carl = await open('carl')
  const first = await bob.next('presence-diff')
  t.match(first.param, { leaves: [] })
  t.ok(typeof first.seq === 'number', 'a channel message every member receives: it carries a seq')
  // Carl's join may have come in bob's round or the next: read until both are seen.
  const joined = new Set((first.param as { joins: Array<{ user: string }> }).joins.map((j) => j.user))
  if (!joined.has('carl')) {
    for (const j of (await bob.next('presence-diff')).param as { joins: Array<{ user: string }> }['joins']) joined.add(j.user)
  }
  t.same([...joined].sort(), ['bob', 'carl'], 'the joiner is in the diff too')
  const ann = await open('ann')
  const dan = await open('dan')
  await gone(carl)
  const seen = { joins: new Set<string>(), leaves: new Set<string>() }
  while (!seen.leaves.has('carl') || !seen.joins.has('dan') || !seen.joins.has('ann')) {
    const changes = presenceChanges(await bob.next('presence-diff'))
    for (const j of changes?.joins ?? []) seen.joins.add(j.user)
    for (const l of changes?.leaves ?? []) seen.leaves.add(l.user)
  }
  t.same(bob.messages.filter((m) => m.cmd === 'user-joined' || m.cmd === 'user-left'), [], 'no per-user messages in diff mode')
  await gone(ann)
  await gone(dan)
})

t.test('announce picks a mode per channel; a function that throws or answers nonsense means none, logged', async (t) => {
  const logs = new LogSink()
  const { app, open } = await start(t, {
    presence: {
      interval: 0,
      announce: (channel) => {
        if (channel === 'room-quiet') return 'none'
        if (channel === 'room-broken') throw new Error('boom')
        if (channel === 'room-odd') return 'loud' as 'none'
        return 'events'
      }
    }
  }, logs)
  for (const room of ['quiet', 'broken', 'odd']) {
    const ann = await open('ann', room)
    await open('bob', room)
    await flush(app, `room-${room}`, ann)
    t.same(heard(ann), [], `room-${room} announces nothing`)
  }
  t.ok(logs.lines.some((l) => l.level === 40 && /presence.announce threw/.test(l.msg) && l.channel === 'room-broken'), 'a throw is logged')
  t.notOk(logs.lines.some((l) => /must answer/.test(l.msg)), 'the wrong answer after it is not: once a minute at most, whatever clients make it see')
  const other = new LogSink()
  const odd = await start(t, { presence: { interval: 0, announce: () => 'loud' as 'none' } }, other)
  await odd.open('ann')
  await odd.open('bob')
  t.ok((await other.next((l) => /must answer/.test(l.msg))).level === 40, 'a wrong answer is logged at warn')
  const ann = await open('ann', 'loud')
  await open('bob', 'loud')
  await heardJoin(ann, 'bob')
})

t.test('subscribe churn: past subscribeRate a connection is refused FST_SOCKET_LIMIT_EXCEEDED, and closed with 1008 if it keeps on', async (t) => {
  const { open } = await start(t, { subscribeRate: { perSecond: 1, burst: 4 }, rateLimit: { perSecond: 2, burst: 1000 } })
  const client = await open('ann')
  const answers = []
  for (let i = 0; i < 6; i++) answers.push(await client.request(`room-x${i}`, 'subscribe', null))
  t.same(answers.slice(0, 4).map((a) => a.cmd), ['reply', 'reply', 'reply', 'reply'], 'the burst')
  t.match(answers[4], { cmd: 'error', param: { code: 'FST_SOCKET_LIMIT_EXCEEDED', message: /subscribes and unsubscribes a second/ } })
  t.same(answers[5]?.cmd, 'error')
  t.match(await client.request('room-a', 'ping', null), { cmd: 'pong' }, 'other messages still go through')
  // "Keeps on": more refusals in 5 s than `rateLimit.perSecond` allows in 5 s (10).
  for (let i = 0; i < 12; i++) client.send({ channel: 'room-y', cmd: 'unsubscribe' })
  t.match(await client.closed, { code: 1008, reason: 'subscribe rate limit exceeded' })
})

t.test('connection rate per IP: past the burst, 429 FST_SOCKET_CONNECTION_RATE_LIMITED with Retry-After, before the token is checked', async (t) => {
  const { base } = await start(t, { connectionLimits: { ratePerIp: 0.5, burst: 2 } })
  const url = `${base}/ws/a`
  await connect(url, sign({ sub: 'ann' })).then(({ client }) => client.close())
  // A bad token counts too: every attempt costs the server work.
  t.equal((await refused(url, { headers: { authorization: 'Bearer nonsense' } })).status, 401)
  const limited = await refused(url, { headers: { authorization: `Bearer ${sign({ sub: 'bob' })}` } })
  t.equal(limited.status, 429)
  t.equal(limited.body.code, 'FST_SOCKET_CONNECTION_RATE_LIMITED')
  t.match(limited.body.message, /IP address/)
  t.ok(Number(limited.headers['retry-after']) >= 1 && Number(limited.headers['retry-after']) <= 2, `Retry-After: ${String(limited.headers['retry-after'])}`)
  const again = await refused(url, { headers: { authorization: 'Bearer nonsense' } })
  t.equal(again.status, 429, 'refused attempts are counted: a loop stays refused')
})

t.test('connection rate per user: counted once the token is verified', async (t) => {
  const { base } = await start(t, { connectionLimits: { ratePerUser: 0.5, burst: 2 } })
  const url = `${base}/ws/a`
  for (let i = 0; i < 2; i++) (await connect(url, sign({ sub: 'ann' }))).client.close()
  const limited = await refused(url, { headers: { authorization: `Bearer ${sign({ sub: 'ann' })}` } })
  t.equal(limited.status, 429)
  t.match(limited.body, { code: 'FST_SOCKET_CONNECTION_RATE_LIMITED', message: /user/ })
  t.ok(Number(limited.headers['retry-after']) >= 1)
  const { client } = await connect(url, sign({ sub: 'bob' }))
  t.pass('another user from the same IP connects')
  client.close()
})

t.test('a refusal for too many open connections says Retry-After: 5', async (t) => {
  const { base } = await start(t, { connectionLimits: { perUser: 1 } })
  const url = `${base}/ws/a`
  await connect(url, sign({ sub: 'ann' }))
  const full = await refused(url, { headers: { authorization: `Bearer ${sign({ sub: 'ann' })}` } })
  t.match(full, { status: 429, body: { code: 'FST_SOCKET_TOO_MANY_CONNECTIONS' }, headers: { 'retry-after': '5' } })
})

t.test('a refusal while shutting down says Retry-After: 1 (with return503OnClosing off; Fastify\'s own 503 has none)', async (t) => {
  const app = Fastify({ return503OnClosing: false })
  await app.register(forgeSocket, { jwt: { secret: SECRET } })
  app.get('/ws', app.socket.act('room', (app, ps) => ps.upgrade('room-a')))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws`, sign({ sub: 'ann' }))
  const closing = app.close()
  const shutting = await refused(`${base}/ws`, { headers: { authorization: `Bearer ${sign({ sub: 'bob' })}` } })
  t.match(shutting, { status: 503, body: { code: 'FST_SOCKET_SHUTTING_DOWN' }, headers: { 'retry-after': '1' } })
  t.equal((await client.closed).code, 1001)
  await closing
})

t.test('presenceChanges reads every form, and nothing else', async (t) => {
  const member = { user: 'ann', connectionId: 'c1' }
  t.same(presenceChanges({ channel: 'x', cmd: 'user-joined', param: member }), { channel: 'x', joins: [member], leaves: [] })
  t.same(presenceChanges({ channel: 'x', cmd: 'user-left', param: { user: 'ann', node: 'n1' } }), { channel: 'x', joins: [], leaves: [{ user: 'ann', node: 'n1' }] })
  t.same(presenceChanges({ channel: 'x', cmd: 'presence-diff', param: { joins: [member, { nope: 1 }], leaves: 'x' } }), { channel: 'x', joins: [member], leaves: [] })
  t.equal(presenceChanges({ channel: 'x', cmd: 'presence-diff', param: null }), null)
  t.equal(presenceChanges({ channel: 'x', cmd: 'user-joined', param: { who: 'ann' } }), null)
  t.equal(presenceChanges({ channel: 'x', cmd: 'chat-message', param: member }), null)
})

t.test('a node\'s users who came or went with it: each channel\'s mode, and the cap counting them too', async (t) => {
  const sent: Array<[string, string, unknown]> = []
  const outlet = {
    broadcast: () => { throw new Error('node changes go to this node\'s members only') },
    deliver: (channel: string, cmd: string, param: object) => { sent.push([channel, cmd, param]) },
    present: () => null,
    warn: () => {}
  }
  const modes: Record<string, 'events' | 'diff' | 'none'> = { 'room-e': 'events', 'room-d': 'diff', 'room-n': 'none' }
  const announcer = new PresenceAnnouncer({ announce: (channel) => modes[channel] ?? 'events', interval: 100, maxUsers: 3 }, outlet)
  const gone = [{ user: 'bob', node: 'n2' }, { user: 'carl', node: 'n2' }]
  announcer.nodeChange('room-e', [], gone, 1)
  announcer.nodeChange('room-d', [], gone, 1)
  announcer.nodeChange('room-n', [], gone, 1)
  t.same(sent, [
    ['room-e', 'user-left', { user: 'bob', node: 'n2' }],
    ['room-e', 'user-left', { user: 'carl', node: 'n2' }],
    ['room-d', 'presence-diff', { joins: [], leaves: gone }]
  ], 'one message per user, one diff, nothing')
  sent.length = 0
  announcer.nodeChange('room-e', [], gone, 2)
  t.same(sent, [], 'two here and two gone make four users: over the cap of 3, though two remain')
  announcer.stop()
})
