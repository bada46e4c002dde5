// The load generator: a process of its own, started by run.ts with one task as argv[2] (JSON). It opens the
// clients, drives the scenario, and prints one JSON result line. Every client is the same lean WebSocket client
// (lite-client.ts; for socket.io it speaks Engine.IO v4 itself: the open packet, `40` connect with the token,
// `3` to pings), so the client side costs the same whichever server is measured, and little.
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import * as hdr from 'hdr-histogram-js'
import { LiteSocket } from './lite-client.js'
import { CHANNEL, PUB_CHANNEL, cpuMicros, param, token, type Kind, type Role, type ServerStats } from './common.js'

export type Task =
  | { scenario: 'fanout', kind: Kind, ports: number[], subscribers: number, warmup: number, duration: number, window: number }
  /** `ids`: each request carries an `id` (`<instance>.<counter>`, as forge-socket's client makes them), so the server dedupes it. */
  | { scenario: 'echo', kind: Kind, ports: number[], clients: number, warmup: number, duration: number, ids?: boolean }
  | { scenario: 'connect', kind: Kind, ports: number[], connections: number, concurrency: number, warmup: number }

export interface Result {
  /** Messages (fan-out: deliveries; echo: round trips; connect: handshakes) per second. */
  rate: number
  p50?: number
  p99?: number
  /** Server CPU µs per delivered message (fan-out), round trip (echo) or handshake (connect), summed over the servers. */
  cpuPerMessage?: number
  /** Heap + external bytes per idle connection (connect), after a full GC. */
  bytesPerConnection?: number
  rssPerConnection?: number
  /** Handshakes per second of a server that has not handled one yet (connect: the first warm-up round). */
  coldRate?: number
  /** connect: the servers' CPU µs per handshake in that first round (summed), and each server's (the ports' order). */
  coldCpu?: number
  coldPerServer?: number[]
  /** connect: the servers' (summed) and the load generator's CPU use in that first round, % of one core. */
  coldServerCpu?: number
  coldLoadgenCpu?: number
  lost: number
  /** The load generator's own CPU use during the measurement, % of one core. */
  loadgenCpu: number
  /** The servers' CPU use during the measurement, % of one core (summed). */
  serverCpu: number
  /** connect: each server's CPU µs per handshake it took in the timed round (the ports' order). */
  perServer?: number[]
}

const task = JSON.parse(process.argv[2] ?? '{}') as Task
const TOKEN = token('bench-user')

async function serverStats (port: number, gc = false): Promise<ServerStats> {
  const res = await fetch(`http://127.0.0.1:${port}/__bench/stats${gc ? '?gc=1' : ''}`)
  return await res.json() as ServerStats
}

async function allStats (gc = false): Promise<ServerStats[]> {
  return await Promise.all(task.ports.map((port) => serverStats(port, gc)))
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A connected client: `send` a message in the kind's own format; `onMessage` gets every application message. */
interface Conn {
  ws: LiteSocket
  send: (cmd: string, body: string, ack?: number, id?: string) => void
  onMessage: (data: Buffer) => void
}

/** Opens one client and resolves once the server has accepted it (forge: `connected`; socket.io: `40`). */
async function open (kind: Kind, port: number, role: Role): Promise<Conn> {
  const path = kind === 'socketio' ? '/socket.io/?EIO=4&transport=websocket' : role === 'pub' ? '/ws/bench-pub' : '/ws/bench'
  const ws = await LiteSocket.connect(port, path, kind === 'socketio' ? {} : { authorization: `Bearer ${TOKEN}` })
  const channel = role === 'pub' ? PUB_CHANNEL : CHANNEL
  const conn: Conn = {
    ws,
    onMessage: () => {},
    send: kind === 'forge'
      ? (cmd, body, ack, id) => ws.send(`{"channel":"${channel}","cmd":"${cmd}","param":${body}${ack === undefined ? '' : `,"ref":"${ack}"`}${id === undefined ? '' : `,"id":"${id}"`}}`)
      : kind === 'ws' || kind === 'wscork' || kind === 'fastify'
        ? (cmd, body, ack) => ws.send(`{"cmd":"${cmd}","param":${body}${ack === undefined ? '' : `,"ref":"${ack}"`}}`)
        : (cmd, body, ack) => ws.send(`42${ack === undefined ? '' : ack}["${cmd}",${body}]`)
  }
  const ready = (): void => {
    ws.onMessage = kind === 'socketio'
      // Engine.IO pings ("2") are answered, not counted.
      ? (data) => { if (data.length === 1 && data[0] === 0x32) ws.send('3'); else conn.onMessage(data) }
      : (data) => conn.onMessage(data)
  }
  if (kind === 'ws' || kind === 'wscork' || kind === 'fastify') {
    ready()
    return conn
  }
  await new Promise<void>((resolve, reject) => {
    ws.onMessage = (data) => {
      if (kind === 'forge') {
        ready()
        return resolve()
      }
      const text = data.toString()
      if (text.startsWith('0')) return ws.send(`40${JSON.stringify({ token: TOKEN, role })}`)
      if (text.startsWith('40')) {
        ready()
        return resolve()
      }
      if (text.startsWith('44')) reject(new Error(`socket.io refused the connection: ${text}`))
    }
  })
  return conn
}

/** Opens `count` clients, `concurrency` at a time, spread over the ports in turn. */
async function openMany (count: number, role: Role, concurrency = 100): Promise<Conn[]> {
  const conns: Conn[] = new Array(count)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) {
      const i = next++
      conns[i] = await open(task.kind, task.ports[i % task.ports.length] as number, role)
    }
  }))
  return conns
}

/** The send time a message carries (parsed only on the sampled clients). */
function sentAt (kind: Kind, data: Buffer): number {
  const text = data.toString()
  const parsed = JSON.parse(kind === 'socketio' ? text.slice(2) : text) as { param: { t: number } } | [string, { t: number }]
  return Array.isArray(parsed) ? parsed[1].t : parsed.param.t
}

/** Waits (at most 10 s) for what is still on its way after a measurement; what never arrives counts as lost. */
async function drained (done: () => boolean): Promise<void> {
  const deadline = performance.now() + 10_000
  while (!done() && performance.now() < deadline) await sleep(20)
}

function histogram (): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
}

/** Measures from now for `duration` ms: the servers' and this process's CPU, and how far `count()` moved. */
async function measure (duration: number, count: () => number): Promise<{ done: number, seconds: number, serverCpu: number, loadgenCpu: number }> {
  const before = await allStats()
  const cpu0 = cpuMicros()
  const n0 = count()
  const t0 = performance.now()
  await sleep(duration)
  const n1 = count()
  const t1 = performance.now()
  const cpu1 = cpuMicros()
  const after = await allStats()
  const serverMicros = after.reduce((sum, s, i) => sum + s.cpu - (before[i]?.cpu ?? 0), 0)
  const seconds = (t1 - t0) / 1000
  return { done: n1 - n0, seconds, serverCpu: serverMicros / 1e4 / seconds, loadgenCpu: (cpu1 - cpu0) / 1e4 / seconds }
}

async function fanout (t: Extract<Task, { scenario: 'fanout' }>): Promise<Result> {
  const subs = await openMany(t.subscribers, 'sub')
  const pub = await open(t.kind, t.ports[0] as number, 'pub')
  const n = t.subscribers
  const sampled = Math.min(20, n)
  const latencies = histogram()
  let received = 0
  let published = 0
  let running = true
  let recording = false
  const pump = (): void => {
    // A closed loop: at most `window` messages on their way to every subscriber.
    while (running && published * n - received < t.window * n) {
      pub.send('pub', param(performance.now()))
      published++
    }
  }
  subs.forEach((conn, i) => {
    conn.onMessage = i < sampled
      ? (data) => {
          received++
          if (recording) latencies.recordValue(Math.max(1, Math.round((performance.now() - sentAt(t.kind, data)) * 1000)))
          pump()
        }
      : () => {
          received++
          pump()
        }
  })
  pump()
  await sleep(t.warmup)
  recording = true
  const m = await measure(t.duration, () => received)
  recording = false
  running = false
  // Every message published must reach every subscriber.
  await drained(() => received >= published * n)
  const result: Result = {
    rate: m.done / m.seconds,
    p50: latencies.getValueAtPercentile(50) / 1000,
    p99: latencies.getValueAtPercentile(99) / 1000,
    cpuPerMessage: (m.serverCpu * 1e4 * m.seconds) / m.done,
    lost: published * n - received,
    loadgenCpu: m.loadgenCpu,
    serverCpu: m.serverCpu
  }
  for (const conn of [...subs, pub]) conn.ws.terminate()
  return result
}

async function echo (t: Extract<Task, { scenario: 'echo' }>): Promise<Result> {
  const clients = await openMany(t.clients, 'echo')
  const latencies = histogram()
  let done = 0
  let sent = 0
  let running = true
  let recording = false
  const body = param(0)
  // One instance per client, as each browser tab's Socket has its own.
  const instance = (i: number): string => `${randomBytes(8).toString('hex')}${i}`.slice(0, 16)
  clients.forEach((conn, i) => {
    let since = 0
    let counter = 0
    const prefix = `${instance(i)}.`
    const ask = (): void => {
      since = performance.now()
      sent++
      conn.send('echo', body, i, t.ids === true ? prefix + (++counter).toString(36) : undefined)
    }
    conn.onMessage = () => {
      done++
      if (recording) latencies.recordValue(Math.max(1, Math.round((performance.now() - since) * 1000)))
      if (running) ask()
    }
    ask()
  })
  await sleep(t.warmup)
  recording = true
  const m = await measure(t.duration, () => done)
  recording = false
  running = false
  await drained(() => done >= sent)
  for (const conn of clients) conn.ws.terminate()
  return {
    rate: m.done / m.seconds,
    p50: latencies.getValueAtPercentile(50) / 1000,
    p99: latencies.getValueAtPercentile(99) / 1000,
    cpuPerMessage: (m.serverCpu * 1e4 * m.seconds) / m.done,
    lost: sent - done,
    loadgenCpu: m.loadgenCpu,
    serverCpu: m.serverCpu
  }
}

/** Waits (at most 10 s) until the servers have closed every connection. */
async function allClosed (): Promise<void> {
  const deadline = performance.now() + 10_000
  while ((await allStats()).some((s) => s.open > 0) && performance.now() < deadline) await sleep(20)
}

async function connect (t: Extract<Task, { scenario: 'connect' }>): Promise<Result> {
  // Warm-up rounds, as the other scenarios have a warm-up: the first handshakes of a fresh process run cold code
  // (most of all in the servers with more of it), and a long-running server is measured warm. The first round is
  // timed too (`coldRate`).
  let cold: Pick<Result, 'coldRate' | 'coldCpu' | 'coldPerServer' | 'coldServerCpu' | 'coldLoadgenCpu'> = {}
  for (let round = 0; round * t.connections < t.warmup; round++) {
    const stats0 = round === 0 ? await allStats() : []
    const cpu0 = cpuMicros()
    const w0 = performance.now()
    const warm = await openMany(t.connections, 'sub', t.concurrency)
    if (round === 0) {
      const seconds = (performance.now() - w0) / 1000
      const loadgenMicros = cpuMicros() - cpu0
      const perServer = (await allStats()).map((s, i) => s.cpu - (stats0[i]?.cpu ?? 0))
      const serverMicros = perServer.reduce((sum, micros) => sum + micros, 0)
      cold = {
        coldRate: t.connections / seconds,
        coldCpu: serverMicros / t.connections,
        coldPerServer: perServer.map((micros) => micros / (t.connections / perServer.length)),
        coldServerCpu: serverMicros / 1e4 / seconds,
        coldLoadgenCpu: loadgenMicros / 1e4 / seconds
      }
    }
    for (const conn of warm) conn.ws.terminate()
    await allClosed()
  }
  // The timed round. No forced GC before it: a full collection right before makes the next thousands of
  // allocations far dearer (for every server, 2-3x the CPU per handshake), which no server in production sees.
  const before = await allStats()
  const cpu0 = cpuMicros()
  const t0 = performance.now()
  const timed = await openMany(t.connections, 'sub', t.concurrency)
  const seconds = (performance.now() - t0) / 1000
  const loadgenCpu = (cpuMicros() - cpu0) / 1e4 / seconds
  const after = await allStats()
  const serverMicros = after.reduce((sum, s, i) => sum + s.cpu - (before[i]?.cpu ?? 0), 0)
  let lost = timed.filter((c) => !c.ws.open).length
  for (const conn of timed) conn.ws.terminate()
  await allClosed()
  // The memory round: the same connections again, held, between two full collections.
  const empty = await allStats(true)
  const held = await openMany(t.connections, 'sub', t.concurrency)
  const full = await allStats(true)
  const delta = (key: keyof ServerStats): number => full.reduce((sum, s, i) => sum + s[key] - (empty[i]?.[key] ?? 0), 0)
  lost += held.filter((c) => !c.ws.open).length
  for (const conn of held) conn.ws.terminate()
  return {
    rate: t.connections / seconds,
    cpuPerMessage: serverMicros / t.connections,
    // The connections go to the ports in turn, so each server took an equal share.
    perServer: after.map((s, i) => (s.cpu - (before[i]?.cpu ?? 0)) / (t.connections / after.length)),
    ...cold,
    bytesPerConnection: (delta('heapUsed') + delta('external')) / t.connections,
    rssPerConnection: delta('rss') / t.connections,
    lost,
    loadgenCpu,
    serverCpu: serverMicros / 1e4 / seconds
  }
}

const run = { fanout, echo, connect }[task.scenario] as (t: Task) => Promise<Result>
const result = await run(task)
process.stdout.write(`${JSON.stringify(result)}\n`)
process.exit(0)
