// `npm run bench`: forge-socket, raw ws and socket.io 4 side by side, each server in a process of its own and the
// load generator in another. Prints a table and the targets, and writes the figures to bench/results/latest.json.
// Options: --runs N (default 5; medians are reported; presence: at most 3), --quick (1 run, shorter), --only <scenario id>[,<id>…],
// --pin (with two or more cores and `taskset`: the servers on core 0, the load generator on core 1, so neither
// takes the other's core; both nodes of the Redis scenario then share one core).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { startRedis, stop } from './processes.js'
import { once } from 'node:events'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { KINDS, KIND_NAMES, type Kind } from './common.js'
import type { Result, Task } from './loadgen.js'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const ROOT = fileURLToPath(new URL('../../', import.meta.url))

const { values: args } = parseArgs({ options: { runs: { type: 'string' }, quick: { type: 'boolean' }, only: { type: 'string' }, pin: { type: 'boolean' } } })
const quick = args.quick === true
const runs = Number(args.runs ?? (quick ? 1 : 5))
const warmup = quick ? 500 : 1000
const duration = quick ? 2000 : 4000

interface Scenario {
  id: string
  title: string
  kinds: readonly Kind[]
  /** Servers per run (2: two forge-socket nodes sharing a Redis). */
  nodes: number
  /** The servers' environment, besides the machine's. */
  env?: NodeJS.ProcessEnv
  /**
   * Every kind's server at once, one load generator taking turns between them (speaking `kind` to all: servers that
   * connect alike): each run compares them under the same conditions, which sequential runs on a noisy machine do not.
   */
  together?: { kind: Kind }
  task: (kind: Kind, ports: number[]) => Task
}

/** The kinds of the scenarios with no fan-out (the corked ws server answers and connects as raw ws does). */
const UNBATCHED: readonly Kind[] = ['forge', 'ws', 'socketio']

const scenarios: Scenario[] = [
  ...[1000, 5000].map((subscribers): Scenario => ({
    id: `fanout-${subscribers / 1000}k`,
    title: `fan-out to ${subscribers.toLocaleString('en')} subscribers of one channel (~100-byte messages)`,
    kinds: KINDS,
    nodes: 1,
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers, warmup, duration, window: 4 })
  })),
  ...[1000, 5000, 10_000].flatMap((subscribers) => [1, 2].map((window): Scenario => ({
    // No bursts: a message is published once the one before it (window 1), or the one before that (window 2), reached
    // every subscriber, so each broadcast is handled in a tick of its own and corking has nothing to merge: the
    // per-message cost with no help from batching.
    id: `fanout-${subscribers / 1000}k-w${window}`,
    title: `fan-out to ${subscribers.toLocaleString('en')} subscribers, ${window === 1 ? 'one message' : 'two messages'} in flight (no bursts to batch)`,
    kinds: KINDS,
    nodes: 1,
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers, warmup, duration, window })
  }))),
  {
    // The same as fanout-1k with channel history on (memory broker): each broadcast is numbered and kept once.
    id: 'fanout-1k-history',
    title: 'fan-out to 1,000 subscribers of one channel with history on (memory broker, size 100)',
    kinds: ['forge'],
    nodes: 1,
    env: { BENCH_HISTORY: '1' },
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers: 1000, warmup, duration, window: 4 })
  },
  {
    // The same as fanout-1k with Prometheus metrics on, scraped every second: counted per broadcast, never per recipient.
    id: 'fanout-1k-metrics',
    title: 'fan-out to 1,000 subscribers of one channel with metrics on (prom-client, scraped every second)',
    kinds: ['forge'],
    nodes: 1,
    env: { BENCH_METRICS: '1' },
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers: 1000, warmup, duration, window: 4 })
  },
  {
    id: 'echo',
    title: 'echo / request-reply, 100 clients, one request in flight each',
    kinds: UNBATCHED,
    nodes: 1,
    task: (kind, ports) => ({ scenario: 'echo', kind, ports, clients: 100, warmup, duration })
  },
  {
    // echo with an id on every request: each is claimed and its answer kept (the in-process record, memory broker).
    id: 'echo-ids',
    title: 'echo with an id on every request (dedupe: claimed, answer kept; memory broker), 100 clients',
    kinds: ['forge'],
    nodes: 1,
    task: (kind, ports) => ({ scenario: 'echo', kind, ports, clients: 100, warmup, duration, ids: true })
  },
  {
    id: 'connect',
    title: 'connection setup with JWT (2,000 connections, 50 at a time, after warm-up rounds of 10,000), memory per idle connection',
    // Bare Fastify with @fastify/websocket too: what Fastify's lifecycle costs before forge-socket does anything.
    kinds: [...UNBATCHED, 'fastify'],
    nodes: 1,
    task: (kind, ports) => ({ scenario: 'connect', kind, ports, connections: 2000, concurrency: 50, warmup: 10_000 })
  },
  {
    // connect's CPU per handshake, the servers side by side: the load generator connects to each in turn (as raw ws
    // does, not waiting for forge-socket's `connected`, which is sent all the same), and reads each one's CPU.
    id: 'connect-paired',
    title: 'connection setup with JWT, the servers at the same time (6,000 connections, 2,000 each, after warm-up rounds of 12,000)',
    kinds: ['forge', 'ws', 'fastify'],
    nodes: 1,
    together: { kind: 'ws' },
    task: (kind, ports) => ({ scenario: 'connect', kind, ports, connections: 6000, concurrency: 50, warmup: 12_000 })
  },
  {
    id: 'fanout-1k-redis',
    title: 'fan-out to 1,000 subscribers split over two forge-socket nodes sharing a Redis',
    kinds: ['forge'],
    nodes: 2,
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers: 1000, warmup, duration, window: 4 })
  },
  {
    // fanout-1k-redis with history on: each broadcast is one append script (seq, stream, trim, TTLs, publish).
    id: 'fanout-1k-redis-history',
    title: 'fan-out to 1,000 subscribers split over two forge-socket nodes sharing a Redis, history on (size 100)',
    kinds: ['forge'],
    nodes: 2,
    env: { BENCH_HISTORY: '1' },
    task: (kind, ports) => ({ scenario: 'fanout', kind, ports, subscribers: 1000, warmup, duration, window: 4 })
  },
  ...[false, true].map((ids): Scenario => ({
    // Over Redis, an id costs a claim script and a SET per request, each a round trip before the answer.
    id: ids ? 'echo-ids-redis' : 'echo-redis',
    title: `echo${ids ? ' with an id on every request (the record in Redis)' : ''}, 100 clients split over two forge-socket nodes sharing a Redis`,
    kinds: ['forge'],
    nodes: 2,
    task: (kind, ports) => ({ scenario: 'echo', kind, ports, clients: 100, warmup, duration, ids })
  }))
]

function hasTaskset (): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v taskset'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

const pin = args.pin === true && cpus().length >= 2 && hasTaskset()

/** Starts a node child (on `core`, when pinning) and resolves with its first stdout line, parsed. */
async function child (core: number, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ proc: ChildProcess, first: unknown }> {
  // taskset execs node in its place, so the pid is node's.
  const [command, argv] = pin ? ['taskset', ['-c', String(core), process.execPath, ...args]] : [process.execPath, args]
  const proc = spawn(command, argv, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream })
  const exited = once(proc, 'exit').then(([code]) => { throw new Error(`${args.join(' ')} exited (${String(code)}) before answering`) })
  const [line] = await Promise.race([once(lines, 'line'), exited]) as [string]
  return { proc, first: JSON.parse(line) }
}

/** Busy CPU time of the whole machine, µs (summed over cores). */
function machineBusy (): number {
  return cpus().reduce((sum, cpu) => sum + (cpu.times.user + cpu.times.nice + cpu.times.sys + cpu.times.irq) * 1000, 0)
}

interface Measured extends Result {
  /** CPU the rest of the machine used during the run, % of one core (machine busy − servers − load generator). */
  other: number
}

async function runOnce (scenario: Scenario, kind: Kind, redisUrl: string | undefined): Promise<Measured> {
  const servers = await Promise.all(Array.from({ length: scenario.nodes }, async () =>
    await child(0, ['--expose-gc', `${HERE}server.js`, kind], { ...scenario.env, ...(redisUrl === undefined ? {} : { REDIS_URL: redisUrl }) })))
  try {
    const ports = servers.map((s) => (s.first as { port: number }).port)
    const busy0 = machineBusy()
    const t0 = performance.now()
    const { first } = await child(1, [`${HERE}loadgen.js`, JSON.stringify(scenario.task(kind, ports))])
    const seconds = (performance.now() - t0) / 1000
    // Each server's share is the run's own here (one kind at a time); the medians take numbers only.
    const { perServer: _perServer, coldPerServer: _coldPerServer, ...result } = first as Result
    const machine = (machineBusy() - busy0) / 1e4 / seconds
    return { ...result, other: Math.max(0, machine - result.serverCpu - result.loadgenCpu) }
  } finally {
    await Promise.all(servers.map(async (s) => await stop(s.proc)))
  }
}

/** A `together` scenario's run: each kind's server, the load generator taking turns; the order rotates by run. */
async function runTogether (scenario: Scenario, order: Kind[]): Promise<Partial<Record<Kind, Measured>>> {
  const servers = await Promise.all(order.map(async (kind) => await child(0, ['--expose-gc', `${HERE}server.js`, kind], scenario.env)))
  try {
    const ports = servers.map((s) => (s.first as { port: number }).port)
    const { first } = await child(1, [`${HERE}loadgen.js`, JSON.stringify(scenario.task(scenario.together?.kind ?? 'ws', ports))])
    // Only the CPU per handshake is each server's own; the rest is the run's (its losses counted once, under ws).
    // The first round's too (each server fresh, the same handshakes in turn): the cold CPU per handshake.
    const { perServer, coldPerServer, bytesPerConnection: _bytes, rssPerConnection: _rss, coldRate: _cold, coldCpu: _coldCpu, ...run } = first as Result
    return Object.fromEntries(order.map((kind, i) => [kind, { ...run, cpuPerMessage: perServer?.[i] as number, coldCpu: coldPerServer?.[i] as number, lost: kind === 'ws' ? run.lost : 0, other: 0 }]))
  } finally {
    await Promise.all(servers.map(async (s) => await stop(s.proc)))
  }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** The median of every numeric field over the runs. */
function medians (list: Measured[]): Measured {
  const keys = Object.keys(list[0] ?? {}) as Array<keyof Measured>
  return Object.fromEntries(keys.map((key) => [key, median(list.map((r) => r[key] as number))])) as unknown as Measured
}

const fmt = (value: number | undefined, digits = 1): string => value === undefined ? '' : value.toLocaleString('en', { maximumFractionDigits: digits, minimumFractionDigits: digits })

const started = new Date()
process.stdout.write(`forge-socket bench, ${started.toISOString()}: node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}; ${runs} run(s), medians; ${pin ? 'servers on core 0, load generator on core 1' : 'not pinned to cores'}\n`)

const redis = await startRedis()
const results: Record<string, Partial<Record<Kind, Measured>>> = {}
try {
  for (const scenario of scenarios) {
    if (args.only !== undefined && !args.only.split(',').includes(scenario.id)) continue
    if (scenario.nodes > 1 && redis === null) {
      process.stdout.write(`\n${scenario.title}: skipped, no redis-server on this machine\n`)
      continue
    }
    const perKind: Partial<Record<Kind, Measured[]>> = {}
    for (let run = 0; run < runs; run++) {
      // Kinds interleaved, so a disturbance on the machine spreads over all of them, and their order rotated from
      // run to run, so no kind always goes first (right after the previous scenario) or last.
      const order = scenario.kinds.map((_, i) => scenario.kinds[(i + run) % scenario.kinds.length] as Kind)
      if (scenario.together !== undefined) {
        const together = await runTogether(scenario, order)
        for (const kind of order) (perKind[kind] ??= []).push(together[kind] as Measured)
        continue
      }
      for (const kind of order) (perKind[kind] ??= []).push(await runOnce(scenario, kind, scenario.nodes > 1 ? redis?.url : undefined))
    }
    const summary: Partial<Record<Kind, Measured>> = {}
    for (const kind of scenario.kinds) summary[kind] = medians(perKind[kind] ?? [])
    results[scenario.id] = summary
    const base = summary.ws
    if (scenario.together !== undefined) {
      const cpu = (kind: Kind): number | undefined => summary[kind]?.cpuPerMessage
      const cold = (kind: Kind): number | undefined => summary[kind]?.coldCpu
      process.stdout.write([
        '',
        `### ${scenario.title} (\`${scenario.id}\`)`,
        '',
        '| server | server CPU / handshake | vs ws | cold: the first round\'s | vs ws |',
        '|---|---|---|---|---|',
        ...scenario.kinds.map((kind) => `| ${KIND_NAMES[kind]} | ${fmt(cpu(kind), 2)} µs | ${((cpu(kind) ?? NaN) / (cpu('ws') ?? NaN)).toFixed(2)}x | ${fmt(cold(kind), 2)} µs | ${((cold(kind) ?? NaN) / (cold('ws') ?? NaN)).toFixed(2)}x |`),
        '',
        `All at once: ${fmt(summary.ws?.rate, 0)} handshakes/s in all, load generator CPU ${fmt(summary.ws?.loadgenCpu, 0)} %, ${summary.ws?.lost ?? 0} lost.`,
        ''
      ].join('\n'))
      continue
    }
    const rows = scenario.kinds.map((kind) => {
      const r = summary[kind] as Measured
      const ratio = base === undefined ? '' : `${(r.rate / base.rate).toFixed(2)}x`
      const perMessage = r.cpuPerMessage === undefined ? '' : `${fmt(r.cpuPerMessage, 2)} µs${base?.cpuPerMessage === undefined ? '' : ` (${(r.cpuPerMessage / base.cpuPerMessage).toFixed(2)}x)`}`
      // With the corked ws server in the run, CPU per message against it too (the best hand-written fan-out).
      const corked = summary.wscork?.cpuPerMessage
      const perMessageCorked = corked === undefined || r.cpuPerMessage === undefined ? '' : ` | ${(r.cpuPerMessage / corked).toFixed(2)}x`
      const perConn = r.bytesPerConnection === undefined ? '' : `${fmt(r.bytesPerConnection / 1024)} KiB${base?.bytesPerConnection === undefined ? '' : ` (${(r.bytesPerConnection / base.bytesPerConnection).toFixed(2)}x)`}`
      return `| ${KIND_NAMES[kind]} | ${fmt(r.rate, 0)} | ${ratio} | ${fmt(r.p50, 2)} | ${fmt(r.p99, 2)} | ${perMessage}${perMessageCorked} | ${perConn} | ${r.lost} | ${fmt(r.serverCpu, 0)} % | ${fmt(r.loadgenCpu, 0)} % | ${fmt(r.other, 0)} % |`
    })
    process.stdout.write([
      '',
      `### ${scenario.title} (\`${scenario.id}\`)`,
      '',
      `| server | per second | vs ws | p50 ms | p99 ms | server CPU / msg${summary.wscork === undefined ? '' : ' | CPU / msg vs corked'} | heap+ext / conn | lost | server CPU | load gen CPU | other CPU |`,
      `|---|---|---|---|---|---|${summary.wscork === undefined ? '' : '---|'}---|---|---|---|---|`,
      ...rows,
      ...(base?.coldRate === undefined
        ? []
        : ['', `Cold, the first 2,000 handshakes of a fresh process (rate, and server CPU per handshake): ${scenario.kinds.map((kind) => {
            const cold = summary[kind]?.coldRate ?? 0
            const cpu = summary[kind]?.coldCpu ?? 0
            return `${KIND_NAMES[kind]} ${fmt(cold, 0)}/s (${(cold / (base.coldRate as number)).toFixed(2)}x), ${fmt(cpu, 0)} µs (${(cpu / (base.coldCpu as number)).toFixed(2)}x)`
          }).join('; ')}.`]),
      ''
    ].join('\n'))
  }
} finally {
  await redis?.stop()
}

/** What the targets read of the reconnect storm's results (bench/storm.ts), once it ran. */
interface StormFigures { back100: number | null, notBack: number, gaveUp: number }
let stormResults: StormFigures[] | null = null
/** The storm's goal: every client back within twice the client's backoff cap (20 s by default). */
const STORM_GOAL_MS = 40_000

/** The issue's targets, each with the figure that decides it. */
function targets (): Array<{ target: string, value: number | null, pass: boolean | null }> {
  const get = (id: string, kind: Kind): Measured | undefined => results[id]?.[kind]
  const ratio = (a: number | undefined, b: number | undefined): number | null => a === undefined || b === undefined ? null : a / b
  const list: Array<{ target: string, value: number | null, limit: number, atMost: boolean }> = []
  for (const id of ['fanout-1k', 'fanout-5k']) {
    list.push({ target: `${id}: server CPU per message ≤ 0.70x raw ws`, value: ratio(get(id, 'forge')?.cpuPerMessage, get(id, 'ws')?.cpuPerMessage), limit: 0.7, atMost: true })
    list.push({ target: `${id}: throughput ≥ 1.4x raw ws`, value: ratio(get(id, 'forge')?.rate, get(id, 'ws')?.rate), limit: 1.4, atMost: false })
    list.push({ target: `${id}: throughput ≥ 1.6x socket.io`, value: ratio(get(id, 'forge')?.rate, get(id, 'socketio')?.rate), limit: 1.6, atMost: false })
  }
  for (const subscribers of [1, 5, 10]) {
    for (const window of [1, 2]) {
      const id = `fanout-${subscribers}k-w${window}`
      list.push({ target: `${id}: server CPU per message ≤ 1.0x ws framed once, corked`, value: ratio(get(id, 'forge')?.cpuPerMessage, get(id, 'wscork')?.cpuPerMessage), limit: 1.0, atMost: true })
    }
  }
  list.push({ target: 'fanout-1k with history: server CPU per message ≤ 1.15x without', value: ratio(get('fanout-1k-history', 'forge')?.cpuPerMessage, get('fanout-1k', 'forge')?.cpuPerMessage), limit: 1.15, atMost: true })
  list.push({ target: 'fanout-1k with metrics: throughput ≥ 0.95x without (within 1.05x)', value: ratio(get('fanout-1k-metrics', 'forge')?.rate, get('fanout-1k', 'forge')?.rate), limit: 0.95, atMost: false })
  list.push({ target: 'fanout-1k with metrics: server CPU per message ≤ 1.05x without', value: ratio(get('fanout-1k-metrics', 'forge')?.cpuPerMessage, get('fanout-1k', 'forge')?.cpuPerMessage), limit: 1.05, atMost: true })
  list.push({ target: 'echo with ids: server CPU per round trip ≤ 1.1x without (memory)', value: ratio(get('echo-ids', 'forge')?.cpuPerMessage, get('echo', 'forge')?.cpuPerMessage), limit: 1.1, atMost: true })
  list.push({ target: 'echo: round trips/s ≥ 1.0x raw ws', value: ratio(get('echo', 'forge')?.rate, get('echo', 'ws')?.rate), limit: 1.0, atMost: false })
  list.push({ target: 'connect: handshakes/s ≥ 0.8x raw ws', value: ratio(get('connect', 'forge')?.rate, get('connect', 'ws')?.rate), limit: 0.8, atMost: false })
  list.push({ target: 'connect: server CPU per handshake ≤ 1.3x raw ws', value: ratio(get('connect', 'forge')?.cpuPerMessage, get('connect', 'ws')?.cpuPerMessage), limit: 1.3, atMost: true })
  list.push({ target: 'connect, cold: handshakes/s ≥ 0.85x raw ws', value: ratio(get('connect', 'forge')?.coldRate, get('connect', 'ws')?.coldRate), limit: 0.85, atMost: false })
  list.push({ target: 'connect-paired: server CPU per handshake ≤ 1.3x raw ws, side by side', value: ratio(get('connect-paired', 'forge')?.cpuPerMessage, get('connect-paired', 'ws')?.cpuPerMessage), limit: 1.3, atMost: true })
  list.push({ target: 'connect: memory per idle connection ≤ 1.3x raw ws', value: ratio(get('connect', 'forge')?.bytesPerConnection, get('connect', 'ws')?.bytesPerConnection), limit: 1.3, atMost: true })
  list.push({ target: 'two nodes over Redis ≥ 0.6x one node (1k fan-out)', value: ratio(get('fanout-1k-redis', 'forge')?.rate, get('fanout-1k', 'forge')?.rate), limit: 0.6, atMost: false })
  list.push({ target: 'two nodes over Redis with history ≥ 0.5x one node with history (1k fan-out)', value: ratio(get('fanout-1k-redis-history', 'forge')?.rate, get('fanout-1k-history', 'forge')?.rate), limit: 0.5, atMost: false })
  // The last client back, over the runs (with and without jitter), against the goal; one never back counts as past it.
  const stormBack = stormResults === null ? undefined : Math.max(...stormResults.map((r) => r.back100 ?? Infinity))
  list.push({ target: 'storm: every client back within twice the backoff\'s cap (time of the last / 40 s)', value: ratio(stormBack, stormResults === null ? undefined : STORM_GOAL_MS), limit: 1, atMost: true })
  const lost = Object.values(results).flatMap((byKind) => Object.values(byKind)).reduce((sum, r) => sum + (r?.lost ?? 0), 0)
  const strays = stormResults?.reduce((sum, r) => sum + r.notBack + r.gaveUp, 0)
  return [
    ...list.map(({ target, value, limit, atMost }) => ({ target, value, pass: value === null ? null : atMost ? value <= limit : value >= limit })),
    ...(strays === undefined ? [] : [{ target: 'zero storm clients not back or given up', value: strays, pass: strays === 0 }]),
    { target: 'zero messages lost in every scenario', value: lost, pass: lost === 0 }
  ]
}

// The presence scenarios (forge-socket alone: the others have no presence to compare), in a process of their own.
if (args.only === undefined || args.only.startsWith('presence')) {
  const presence = spawn(process.execPath, [`${HERE}presence.js`, ...process.argv.slice(2)], { cwd: ROOT, stdio: 'inherit' })
  const [code] = await once(presence, 'exit') as [number | null]
  if (code !== 0) process.stdout.write(`\npresence scenarios failed (exit ${String(code)})\n`)
}

// The reconnect storm (forge-socket's own client against forge-socket), in a process of its own.
if (args.only === undefined || args.only.split(',').includes('storm')) {
  const storm = spawn(process.execPath, [`${HERE}storm.js`, ...process.argv.slice(2)], { cwd: ROOT, stdio: 'inherit' })
  const [code] = await once(storm, 'exit') as [number | null]
  if (code !== 0) process.stdout.write(`\nstorm failed (exit ${String(code)})\n`)
  else stormResults = (JSON.parse(readFileSync(fileURLToPath(new URL('../../bench/results/storm.json', import.meta.url)), 'utf8')) as { results: StormFigures[] }).results
}

// What history holds per kept message (memory and Redis), in a process of its own (with --expose-gc).
if (args.only === undefined || args.only.split(',').includes('history-memory')) {
  const memory = spawn(process.execPath, ['--expose-gc', `${HERE}history-memory.js`], { cwd: ROOT, stdio: 'inherit' })
  const [code] = await once(memory, 'exit') as [number | null]
  if (code !== 0) process.stdout.write(`\nhistory-memory failed (exit ${String(code)})\n`)
}

const checked = targets()
process.stdout.write(['', '### Targets', '', '| target | measured | met |', '|---|---|---|',
  ...checked.map((t) => `| ${t.target} | ${t.value === null ? 'not run' : t.target.startsWith('zero') ? String(t.value) : `${t.value.toFixed(2)}x`} | ${t.pass === null ? '' : t.pass ? 'yes' : 'no'} |`), ''].join('\n'))

const out = { started: started.toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, loadavg: loadavg(), runs, quick, pinned: pin, results, targets: checked }
mkdirSync(new URL('../../bench/results/', import.meta.url), { recursive: true })
const file = fileURLToPath(new URL('../../bench/results/latest.json', import.meta.url))
writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`)
process.stdout.write(`\nJSON: ${file}\n`)
