// The reconnect storm (`npm run bench -- --only storm`): 10,000 of the project's own clients (lib/client, with ws,
// each with its reconnection backoff) connected to one forge-socket server; the server is killed and started again
// on the same port; how long until 99 % and 100 % of the clients are connected again and have recovered their
// channel, the new server's peak CPU and handshakes per second, and whether any client gave up. Run twice: with
// the client's default backoff (full jitter) and with no jitter, every client retrying at the same moments.
//
// With a redis-server on the machine the server runs on the Redis broker with history on, so the channel's
// history outlives the restart and each client recovers (`onRecover` with `recovered: true`); without one, on the
// memory broker, whose history the restart loses (the clients are told `recovered: false`, reason `epoch`).
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import { Socket } from '../lib/client/index.js'
import { DEFAULT_BACKOFF } from '../lib/client/backoff.js'
import { freePort, startRedis, stop } from './processes.js'
import { cpuMicros, token, type ServerStats } from './common.js'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const { values: args } = parseArgs({ options: { runs: { type: 'string' }, quick: { type: 'boolean' }, only: { type: 'string' }, pin: { type: 'boolean' } } })
const CLIENTS = args.quick === true ? 2000 : 10_000
/** How many clients connect at once while the storm is set up (the ramp is not what is measured). */
const RAMP = 500
/** The stats of the restarted server are read this often, ms: its peak CPU and handshake rate are over this window. */
const SAMPLE = 200

interface StormResult {
  jitter: number
  clients: number
  /** ms from the kill until the new server listened. */
  restart: number
  /** ms from the kill until 99 % / all of the clients had `connected` again. */
  back99: number | null
  back100: number | null
  /** ms from the kill until 99 % / all of the clients had their channel's recovery answer. */
  recovered99: number | null
  recovered100: number | null
  recovered: number
  notRecovered: number
  /** Clients not connected again by the deadline (twice the backoff's cap after the restart). */
  notBack: number
  /** Clients that stopped retrying (an error that ends the client). */
  gaveUp: number
  /** Retries the clients scheduled after the kill (the first after the drop, and one after each failed attempt). */
  attempts: number
  /** The new server's peak CPU (% of one core) and handshakes per second, over 200 ms windows. */
  peakCpu: number
  peakHandshakes: number
  /** The client process's CPU during the storm, % of one core. */
  clientCpu: number
}

/** BENCH_CPU_PROF=<dir>: the restarted server writes a CPU profile there (`--cpu-prof`), to see where a storm goes. */
const PROFILE = process.env.BENCH_CPU_PROF

async function startServer (port: number, env: NodeJS.ProcessEnv, profile = false): Promise<ChildProcess> {
  const flags = profile && PROFILE !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE}`] : []
  const proc = spawn(process.execPath, [...flags, `${HERE}server.js`, 'forge'], { cwd: ROOT, env: { ...process.env, ...env, BENCH_PORT: String(port) }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream })
  const exited = once(proc, 'exit').then(([code]) => { throw new Error(`the storm's server exited (${String(code)}) before listening`) })
  await Promise.race([once(lines, 'line'), exited])
  return proc
}

async function stats (port: number): Promise<ServerStats | null> {
  try {
    return await (await fetch(`http://127.0.0.1:${port}/__bench/stats`)).json() as ServerStats
  } catch {
    return null
  }
}

function percentile (sorted: number[], fraction: number, of: number): number | null {
  const index = Math.ceil(of * fraction) - 1
  return index < sorted.length ? Math.round(sorted[index] as number) : null
}

async function storm (jitter: number, env: NodeJS.ProcessEnv): Promise<StormResult> {
  const port = await freePort()
  let server = await startServer(port, env)
  const url = `ws://127.0.0.1:${port}/ws/bench`
  let killedAt = Infinity
  const back: number[] = []
  const recoveredAt: number[] = []
  let recovered = 0
  let notRecovered = 0
  let gaveUp = 0
  let attempts = 0
  const clients: Socket[] = []
  let opened = 0
  let onOpened = (): void => {}
  for (let i = 0; i < CLIENTS; i++) {
    let up = false
    const socket = new Socket({
      url,
      token: token(`storm-${i}`),
      WebSocket,
      reconnect: { jitter },
      onOpen: () => {
        if (!up) {
          up = true
          opened++
          onOpened()
        } else if (killedAt !== Infinity) {
          back.push(performance.now() - killedAt)
        }
      },
      // Each retry the client schedules is one more attempt (its debug lines are the only place that tells).
      debug: true,
      logger: (line) => { if (killedAt !== Infinity && line.includes('retry in')) attempts++ },
      onError: (error) => { if (error.code === 'FST_SOCKET_MAX_ATTEMPTS') gaveUp++ }
    })
    socket.onRecover((_channel, result) => {
      if (killedAt === Infinity) return
      recoveredAt.push(performance.now() - killedAt)
      if (result.recovered) recovered++
      else notRecovered++
    })
    clients.push(socket)
    // The ramp: RAMP clients connecting at a time.
    if (clients.length - opened >= RAMP) await new Promise<void>((resolve) => { onOpened = () => { if (clients.length - opened < RAMP) resolve() } })
  }
  while (opened < CLIENTS) await new Promise<void>((resolve) => { onOpened = () => { if (opened === CLIENTS) resolve() } })
  onOpened = () => {}

  const cpu0 = cpuMicros()
  killedAt = performance.now()
  await stop(server)
  server = await startServer(port, env, true)
  const restart = performance.now() - killedAt
  // The new server's CPU and connections, sampled until every client is back or the deadline passes.
  const deadline = killedAt + restart + 2 * DEFAULT_BACKOFF.maxDelay
  let peakCpu = 0
  let peakHandshakes = 0
  let last = await stats(port)
  let lastAt = performance.now()
  while (performance.now() < deadline && (back.length < CLIENTS || recoveredAt.length < CLIENTS)) {
    await new Promise((resolve) => setTimeout(resolve, SAMPLE))
    const now = await stats(port)
    const at = performance.now()
    if (now !== null && last !== null) {
      const seconds = (at - lastAt) / 1000
      peakCpu = Math.max(peakCpu, (now.cpu - last.cpu) / 1e4 / seconds)
      peakHandshakes = Math.max(peakHandshakes, (now.open - last.open) / seconds)
    }
    last = now
    lastAt = at
  }
  const clientCpu = (cpuMicros() - cpu0) / 1e4 / ((performance.now() - killedAt) / 1000)
  for (const socket of clients) socket.close()
  if (PROFILE !== undefined) {
    // A clean exit, so the profile is written.
    server.kill('SIGTERM')
    await once(server, 'exit')
  }
  await stop(server)
  back.sort((a, b) => a - b)
  recoveredAt.sort((a, b) => a - b)
  return {
    jitter,
    clients: CLIENTS,
    restart: Math.round(restart),
    back99: percentile(back, 0.99, CLIENTS),
    back100: percentile(back, 1, CLIENTS),
    recovered99: percentile(recoveredAt, 0.99, CLIENTS),
    recovered100: percentile(recoveredAt, 1, CLIENTS),
    recovered,
    notRecovered,
    notBack: CLIENTS - back.length,
    gaveUp,
    attempts,
    peakCpu,
    peakHandshakes,
    clientCpu
  }
}

const redis = await startRedis()
const env: NodeJS.ProcessEnv = redis === null ? { BENCH_HISTORY: '1' } : { BENCH_HISTORY: '1', REDIS_URL: redis.url }
const results: StormResult[] = []
try {
  for (const jitter of [DEFAULT_BACKOFF.jitter, 0]) results.push(await storm(jitter, env))
} finally {
  await redis?.stop()
}

const ms = (value: number | null): string => value === null ? 'not all' : `${(value / 1000).toFixed(2)} s`
process.stdout.write([
  '',
  `### reconnect storm: ${CLIENTS.toLocaleString('en')} of the project's clients, the server killed and started again (\`storm\`, ${redis === null ? 'memory broker: history is lost with the server' : 'Redis broker, history on'})`,
  '',
  `Backoff: the client's default (first retry within ${DEFAULT_BACKOFF.initialDelay} ms, doubling, capped at ${DEFAULT_BACKOFF.maxDelay / 1000} s); goal: all back within ${2 * DEFAULT_BACKOFF.maxDelay / 1000} s (twice the cap).`,
  '',
  '| jitter | restart | 99 % back | all back | 99 % recovered | all recovered | recovered / not | not back | gave up | attempts | peak server CPU | peak handshakes/s | client CPU |',
  '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ...results.map((r) => `| ${r.jitter === 0 ? 'none' : r.jitter === 1 ? 'full (default)' : String(r.jitter)} | ${ms(r.restart)} | ${ms(r.back99)} | ${ms(r.back100)} | ${ms(r.recovered99)} | ${ms(r.recovered100)} | ${r.recovered} / ${r.notRecovered} | ${r.notBack} | ${r.gaveUp} | ${r.attempts.toLocaleString('en')} | ${r.peakCpu.toFixed(0)} % | ${Math.round(r.peakHandshakes).toLocaleString('en')} | ${r.clientCpu.toFixed(0)} % |`),
  ''
].join('\n'))
const file = fileURLToPath(new URL('../../bench/results/storm.json', import.meta.url))
writeFileSync(file, `${JSON.stringify({ started: new Date().toISOString(), broker: redis === null ? 'memory' : 'redis', results }, null, 2)}\n`)
process.stdout.write(`\nJSON: ${file}\n`)
process.exit(0)
