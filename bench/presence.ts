// Presence under load: what announcing joins and leaves costs a forge-socket server, with presence on (its
// defaults: gathered every 100 ms, none above 1,000 users, subscribe/unsubscribe 10 a second per connection).
// Run by run.ts after its scenarios (or alone: `node dist/bench/presence.js [--quick] [--runs N]`). Prints its
// tables and targets, and writes bench/results/presence.json.
//
// - `presence-ramp`: 5,000 connections join one channel, 50 at a time, all of one user and then each of its own.
//   Every distinct user is a presence change that is announced to the members already there.
// - `presence-toggle`: a channel of 2,000 members (each a user of their own) and a bystander timing round trips;
//   then one more connection toggles subscribe/unsubscribe of that channel, at its limit and at 90 a second.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import * as hdr from 'hdr-histogram-js'
import { LiteSocket } from './lite-client.js'
import { CHANNEL, token, type ServerStats } from './common.js'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const { values: args } = parseArgs({ options: { runs: { type: 'string' }, quick: { type: 'boolean' }, only: { type: 'string' }, pin: { type: 'boolean' } }, strict: false })
const quick = args.quick === true
const runs = Math.min(3, Number(args.runs ?? (quick ? 1 : 3)))
const phase = quick ? 3000 : 5000
const CONNECTIONS = 5000
const MEMBERS = 2000

interface Server { port: number, proc: ChildProcess }

/** A forge-socket bench server with presence on; `maxUsers` as given (1,000 is the default, 0 no cap). */
async function startServer (maxUsers = 1000): Promise<Server> {
  const env = { ...process.env, BENCH_PRESENCE: '1', BENCH_PRESENCE_MAX_USERS: String(maxUsers) }
  const proc = spawn(process.execPath, ['--expose-gc', `${HERE}server.js`, 'forge'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(createInterface({ input: proc.stdout as NodeJS.ReadableStream }), 'line') as [string]
  return { port: (JSON.parse(line) as { port: number }).port, proc }
}

async function stopServer ({ proc }: Server): Promise<void> {
  const exited = once(proc, 'exit')
  proc.kill('SIGKILL')
  await exited
}

async function serverCpu (port: number, gc = false): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/__bench/stats${gc ? '?gc=1' : ''}`)
  return (await res.json() as ServerStats).cpu
}

function histogram (): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A member: its socket, and how many frames it received after `connected` (presence, mostly). */
interface Member { ws: LiteSocket, frames: number }

/** Connects as `sub` and resolves on `connected`, with the time it took (ms). */
async function join (port: number, path: string, jwt: string): Promise<{ member: Member, ms: number }> {
  const t0 = performance.now()
  const ws = await LiteSocket.connect(port, path, { authorization: `Bearer ${jwt}` })
  const member: Member = { ws, frames: 0 }
  await new Promise<void>((resolve) => { ws.onMessage = () => resolve() })
  ws.onMessage = () => { member.frames++ }
  return { member, ms: performance.now() - t0 }
}

/** Opens one connection per token, 50 at a time; records each one's connect time (µs) in `latency`. */
async function joinAll (port: number, tokens: string[], latency: hdr.Histogram): Promise<Member[]> {
  const members: Member[] = new Array(tokens.length)
  let next = 0
  await Promise.all(Array.from({ length: 50 }, async () => {
    while (next < tokens.length) {
      const i = next++
      const { member, ms } = await join(port, '/ws/bench', tokens[i] as string)
      latency.recordValue(Math.max(1, Math.round(ms * 1000)))
      members[i] = member
    }
  }))
  return members
}

interface Ramp { seconds: number, p50: number, p99: number, serverCpuSeconds: number, presenceFrames: number }

async function ramp (distinct: boolean): Promise<Ramp> {
  const one = token('bench-user')
  const tokens = Array.from({ length: CONNECTIONS }, (_, i) => distinct ? token(`user-${i}`) : one)
  const server = await startServer()
  try {
    const latency = histogram()
    const cpu0 = await serverCpu(server.port)
    const t0 = performance.now()
    const members = await joinAll(server.port, tokens, latency)
    const seconds = (performance.now() - t0) / 1000
    // The last round of announcements is at most one interval (100 ms) behind the last join.
    await sleep(500)
    const serverCpuSeconds = (await serverCpu(server.port) - cpu0) / 1e6
    const presenceFrames = members.reduce((sum, m) => sum + m.frames, 0)
    for (const m of members) m.ws.terminate()
    return { seconds, p50: latency.getValueAtPercentile(50) / 1000, p99: latency.getValueAtPercentile(99) / 1000, serverCpuSeconds, presenceFrames }
  } finally {
    await stopServer(server)
  }
}

interface TogglePhase { label: string, serverCpu: number, bystanderP99: number, framesToMembers: number, toggles: number, refused: number }

async function toggle (maxUsers: number): Promise<TogglePhase[]> {
  const server = await startServer(maxUsers)
  try {
    const members = await joinAll(server.port, Array.from({ length: MEMBERS }, (_, i) => token(`member-${i}`)), histogram())
    const { member: bystander } = await join(server.port, '/ws/bench', token('bystander'))
    const { member: toggler } = await join(server.port, '/ws/bench-pub', token('toggler'))
    // Let the joins' announcements and the garbage of 2,000 handshakes settle before the first phase.
    await sleep(1500)
    await serverCpu(server.port, true)
    const phases: TogglePhase[] = []
    for (const [label, perSecond] of [['idle (no toggler)', 0], ['toggler at its limit (10/s)', 10], ['toggler at 6.7/s (150 ms apart: no round cancels)', 1000 / 150], ['toggler at 90/s (the attack)', 90]] as const) {
      const rtt = histogram()
      const waiting = new Map<string, number>()
      bystander.ws.onMessage = (data) => {
        const ref = /"ref":"(\d+)"/.exec(data.toString())?.[1]
        const sent = ref === undefined ? undefined : waiting.get(ref)
        if (sent !== undefined) rtt.recordValue(Math.max(1, Math.round((performance.now() - sent) * 1000)))
      }
      for (const m of members) m.frames = 0
      const cpu0 = await serverCpu(server.port)
      const t0 = performance.now()
      let n = 0
      let toggles = 0
      // Toggles come without `ref`: only refusals are answered (FST_SOCKET_LIMIT_EXCEEDED past its limit).
      let refused = 0
      toggler.ws.onMessage = (data) => { if (data.includes('"error"')) refused++ }
      const echo = setInterval(() => {
        const ref = String(n++)
        waiting.set(ref, performance.now())
        bystander.ws.send(`{"channel":"${CHANNEL}","cmd":"echo","param":null,"ref":"${ref}"}`)
      }, 20)
      const flip = perSecond === 0
        ? null
        : setInterval(() => {
          toggler.ws.send(`{"channel":"${CHANNEL}","cmd":"${toggles++ % 2 === 0 ? 'subscribe' : 'unsubscribe'}"}`)
        }, 1000 / perSecond)
      await sleep(phase)
      clearInterval(echo)
      if (flip !== null) clearInterval(flip)
      // Leave the channel between phases, and let the last round go out.
      if (toggles % 2 === 1) toggler.ws.send(`{"channel":"${CHANNEL}","cmd":"unsubscribe"}`)
      await sleep(300)
      const seconds = (performance.now() - t0) / 1000
      phases.push({
        label,
        serverCpu: (await serverCpu(server.port) - cpu0) / 1e4 / seconds,
        bystanderP99: rtt.getValueAtPercentile(99) / 1000,
        framesToMembers: members.reduce((sum, m) => sum + m.frames, 0),
        toggles,
        refused
      })
      await sleep(1100) // the toggler's subscribe bucket refills between phases
    }
    return phases
  } finally {
    await stopServer(server)
  }
}

function median<T> (list: T[], key: (item: T) => number): T {
  return [...list].sort((a, b) => key(a) - key(b))[Math.floor(list.length / 2)] as T
}

const fmt = (value: number, digits = 1): string => value.toLocaleString('en', { maximumFractionDigits: digits, minimumFractionDigits: digits })

const only = args.only as string | undefined
const out: { ramp?: { oneUser: Ramp, distinct: Ramp }, toggle?: Array<{ maxUsers: number, phases: TogglePhase[] }> } = {}
if (only === undefined || only === 'presence' || only === 'presence-ramp') {
  const oneUser: Ramp[] = []
  const distinct: Ramp[] = []
  for (let run = 0; run < runs; run++) {
    oneUser.push(await ramp(false))
    distinct.push(await ramp(true))
  }
  out.ramp = { oneUser: median(oneUser, (r) => r.seconds), distinct: median(distinct, (r) => r.seconds) }
  const row = (name: string, r: Ramp): string => `| ${name} | ${fmt(r.seconds, 2)} s | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${fmt(r.serverCpuSeconds, 2)} s | ${r.presenceFrames.toLocaleString('en')} |`
  process.stdout.write(['', `### presence: ${CONNECTIONS.toLocaleString('en')} connections join one channel, 50 at a time (\`presence-ramp\`, median of ${runs})`, '',
    '| connections | ramp | connect p50 ms | connect p99 ms | server CPU | presence frames received |', '|---|---|---|---|---|---|',
    row('all one user', out.ramp.oneUser), row('each a user of its own', out.ramp.distinct), ''].join('\n'))
}
// Twice: with the default cap, which a 2,000-user channel is over (nothing is announced), and with no cap, where
// every change that no round cancels is announced to all 2,000 members and only the subscribe rate bounds it.
const toggles: Array<{ maxUsers: number, phases: TogglePhase[] }> = []
if (only === undefined || only === 'presence' || only === 'presence-toggle') {
  for (const maxUsers of [1000, 0]) {
    const all: TogglePhase[][] = []
    for (let run = 0; run < runs; run++) all.push(await toggle(maxUsers))
    const phases = (all[0] ?? []).map((_, i) => median(all.map((list) => list[i] as TogglePhase), (p) => p.serverCpu))
    toggles.push({ maxUsers, phases })
    process.stdout.write(['', `### presence: one connection toggling subscribe/unsubscribe of a ${MEMBERS.toLocaleString('en')}-member channel, ${maxUsers === 0 ? 'no cap (maxUsers: 0)' : `maxUsers ${maxUsers} (the default)`} (\`presence-toggle\`, ${phase / 1000} s each, median of ${runs})`, '',
      '| phase | toggles sent | refused | server CPU | bystander round trip p99 ms | frames to the members |', '|---|---|---|---|---|---|',
      ...phases.map((p) => `| ${p.label} | ${p.toggles} | ${p.refused} | ${fmt(p.serverCpu)} % | ${fmt(p.bystanderP99, 2)} | ${p.framesToMembers.toLocaleString('en')} |`), ''].join('\n'))
  }
  out.toggle = toggles
}

const targets: Array<{ target: string, value: string, pass: boolean }> = []
if (out.ramp !== undefined) {
  const ratio = out.ramp.distinct.seconds / out.ramp.oneUser.seconds
  targets.push({ target: 'presence-ramp: 5,000 distinct users ramp within 2x the one-user ramp', value: `${ratio.toFixed(2)}x`, pass: ratio <= 2 })
  targets.push({ target: 'presence-ramp: new-connection p99 ≤ 500 ms with distinct users', value: `${fmt(out.ramp.distinct.p99, 0)} ms`, pass: out.ramp.distinct.p99 <= 500 })
}
// The targets are for the defaults; the uncapped run shows what a channel that lifts the cap pays (docs/limits.md).
for (const { maxUsers, phases: [idle, limit, straddling] } of (out.toggle ?? []).filter((run) => run.maxUsers === 1000)) {
  if (idle === undefined || limit === undefined || straddling === undefined) continue
  for (const [what, p] of [['at its limit', limit], ['150 ms apart (no round cancels)', straddling]] as const) {
    const cost = Math.max(0, p.serverCpu - idle.serverCpu)
    targets.push({ target: `presence-toggle (maxUsers ${maxUsers}): a toggler ${what} costs ≤ 5 % of a core`, value: `${fmt(cost)} %`, pass: cost <= 5 })
    targets.push({ target: `presence-toggle (maxUsers ${maxUsers}): …and the bystander's p99 stays ≤ 20 ms`, value: `${fmt(p.bystanderP99, 2)} ms`, pass: p.bystanderP99 <= 20 })
  }
}
process.stdout.write(['', '### Presence targets', '', '| target | measured | met |', '|---|---|---|',
  ...targets.map((t) => `| ${t.target} | ${t.value} | ${t.pass ? 'yes' : 'no'} |`), ''].join('\n'))
mkdirSync(new URL('../../bench/results/', import.meta.url), { recursive: true })
const file = fileURLToPath(new URL('../../bench/results/presence.json', import.meta.url))
writeFileSync(file, `${JSON.stringify({ started: new Date().toISOString(), runs, quick, ...out, targets }, null, 2)}\n`)
process.stdout.write(`\nJSON: ${file}\n`)
