// One bench server, of the kind named by argv[2]: forge-socket (through the plugin, an act route, JWT on
// connect, the envelope), raw ws as most hand-written servers do it, ws with the frame made once and corked writes
// (the best hand-written fan-out), or socket.io 4 with a room. Each listens on
// a free port, serves GET /__bench/stats, and prints `{"port":N}` on its first line of stdout.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createVerifier } from 'fast-jwt'
import Fastify from 'fastify'
import fastifyWebsocket from '@fastify/websocket'
import * as wsModule from 'ws'
import { WebSocketServer, type WebSocket } from 'ws'
import type { Duplex } from 'node:stream'
import { Server as SocketIoServer } from 'socket.io'
import { Registry } from 'prom-client'
import forgeSocket from '../plugin.js'
import { CHANNEL, PUB_CHANNEL, SECRET, cpuMicros, type Kind, type ServerStats } from './common.js'

const verify = createVerifier({ key: SECRET, algorithms: ['HS256'] })

/** How many connections the server has open (each kind counts its own). */
let openConnections = (): number => 0

function stats (gc: boolean): ServerStats {
  if (gc) (globalThis as { gc?: () => void }).gc?.()
  const memory = process.memoryUsage()
  return { cpu: cpuMicros(), rss: memory.rss, heapUsed: memory.heapUsed, external: memory.external, arrayBuffers: memory.arrayBuffers, open: openConnections() }
}

/** Answers the stats route on a plain http server; false for any other request. */
function statsRoute (req: IncomingMessage, res: ServerResponse): boolean {
  if (req.url?.startsWith('/__bench/stats') !== true) return false
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify(stats(req.url.includes('gc=1'))))
  return true
}

function bearer (req: IncomingMessage): string {
  return (req.headers.authorization ?? '').replace(/^Bearer /, '')
}

/** The registry of the fan-out-with-metrics scenario (BENCH_METRICS=1). */
const metricsRegistry = process.env.BENCH_METRICS === '1' ? new Registry() : undefined

async function forge (): Promise<number> {
  const app = Fastify({ logger: false })
  await app.register(forgeSocket, {
    jwt: { secret: SECRET },
    broker: process.env.REDIS_URL ?? 'memory',
    // A publisher and echo clients send thousands of messages a second. Presence is off but for bench/presence.ts
    // (BENCH_PRESENCE=1), which measures it with its defaults, and lets its toggler subscribe to the channel.
    rateLimit: { perSecond: 1_000_000, burst: 1_000_000 },
    presence: process.env.BENCH_PRESENCE === '1' && { maxUsers: Number(process.env.BENCH_PRESENCE_MAX_USERS ?? 1000) },
    // Channel history on every channel (BENCH_HISTORY=1), for the fan-out-with-history scenario.
    history: process.env.BENCH_HISTORY === '1' && { size: 100, ttl: 120_000 },
    // Prometheus metrics on (BENCH_METRICS=1), scraped every second, for the fan-out-with-metrics scenario.
    metrics: metricsRegistry !== undefined && { registry: metricsRegistry },
    authorizeChannel: () => process.env.BENCH_PRESENCE === '1'
  })
  app.get('/ws/bench', app.socket.act('bench', (app, ps) => ps.upgrade(CHANNEL)))
  app.get('/ws/bench-pub', app.socket.act('bench.pub', (app, ps) => ps.upgrade(PUB_CHANNEL)))
  app.socket.command('pub', { handler: (param) => { app.socket.broadcast(CHANNEL, { cmd: 'msg', param }) } })
  app.socket.command('echo', { handler: (param) => param })
  app.get('/__bench/stats', async (request) => stats((request.query as { gc?: string }).gc === '1'))
  openConnections = () => app.socket.status().connections
  if (metricsRegistry !== undefined) {
    const registry = metricsRegistry
    setInterval(() => { void registry.metrics() }, 1000).unref()
  }
  // The reconnect storm (bench/storm.ts) starts the server again on the port it had.
  await app.listen({ port: Number(process.env.BENCH_PORT ?? 0), host: '127.0.0.1' })
  return (app.server.address() as { port: number }).port
}

/**
 * The best hand-written Node fan-out (what socket.io does inside, written by hand): the frame is made once per
 * broadcast (ws's own `Sender.frame`, header and payload in one buffer) and written straight to each member's TCP
 * socket, corked until the end of the tick, so a burst of broadcasts in one tick leaves in one write per socket.
 */
/** ws's frame builder (exported by ws, not described by @types/ws). */
const { Sender } = wsModule as unknown as { Sender: { frame: (data: Buffer, options: Record<string, unknown>) => Buffer[] } }

function corkedBroadcast (members: Set<WebSocket>, text: string): void {
  const frame = Buffer.concat(Sender.frame(Buffer.from(text), { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: false }))
  const sockets: Duplex[] = []
  for (const member of members) {
    if (member.readyState !== 1) continue
    const socket = (member as unknown as { _socket: Duplex })._socket
    socket.cork()
    socket.write(frame)
    sockets.push(socket)
  }
  process.nextTick(() => { for (const socket of sockets) socket.uncork() })
}

/**
 * Fastify with @fastify/websocket and nothing else: the same JWT verifier in a `preValidation` hook, and a socket
 * that is counted and left alone. What Fastify's lifecycle costs a handshake before forge-socket does anything
 * (the connect scenario only).
 */
async function bareFastify (): Promise<number> {
  const app = Fastify({ logger: false })
  await app.register(fastifyWebsocket)
  let open = 0
  openConnections = () => open
  app.get('/__bench/stats', async (request) => stats((request.query as { gc?: string }).gc === '1'))
  app.get('/ws/bench', {
    websocket: true,
    preValidation: async (request) => { verify(bearer(request.raw)) }
  }, (socket) => {
    open++
    socket.on('close', () => { open-- })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return (app.server.address() as { port: number }).port
}

async function ws (corked: boolean): Promise<number> {
  const server = createServer((req, res) => { if (!statsRoute(req, res)) res.writeHead(404).end() })
  const wss = new WebSocketServer({
    server,
    verifyClient: (info: { req: IncomingMessage }) => {
      try {
        verify(bearer(info.req))
        return true
      } catch {
        return false
      }
    }
  })
  const members = new Set<WebSocket>()
  openConnections = () => wss.clients.size
  wss.on('connection', (socket, req) => {
    if (req.url === '/ws/bench') {
      members.add(socket)
      socket.on('close', () => members.delete(socket))
    }
    socket.on('message', (data) => {
      const message = JSON.parse(data.toString()) as { cmd: string, param: unknown, ref?: string }
      if (message.cmd === 'pub') {
        // The usual hand-written broadcast: serialized once, sent to each member.
        const out = JSON.stringify({ channel: CHANNEL, cmd: 'msg', param: message.param })
        if (corked) corkedBroadcast(members, out)
        else for (const member of members) member.send(out)
      } else if (message.cmd === 'echo') {
        socket.send(JSON.stringify({ channel: CHANNEL, cmd: 'reply', param: message.param, ref: message.ref }))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as { port: number }).port
}

async function socketio (): Promise<number> {
  const server = createServer()
  const io = new SocketIoServer(server, { transports: ['websocket'], serveClient: false })
  // socket.io's own request handler answers everything under /socket.io/; the stats route goes first.
  const [ioHandler] = server.listeners('request') as Array<(req: IncomingMessage, res: ServerResponse) => void>
  server.removeAllListeners('request')
  server.on('request', (req: IncomingMessage, res: ServerResponse) => { if (!statsRoute(req, res)) ioHandler?.(req, res) })
  openConnections = () => io.engine.clientsCount
  io.use((socket, next) => {
    try {
      verify(String((socket.handshake.auth as { token?: unknown }).token))
      next()
    } catch (err) {
      next(err as Error)
    }
  })
  io.on('connection', (socket) => {
    if ((socket.handshake.auth as { role?: string }).role !== 'pub') void socket.join(CHANNEL)
    socket.on('pub', (param: unknown) => { io.to(CHANNEL).emit('msg', param) })
    socket.on('echo', (param: unknown, ack: (value: unknown) => void) => { ack(param) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as { port: number }).port
}

const kind = process.argv[2] as Kind
const start = { forge, ws: async () => await ws(false), wscork: async () => await ws(true), socketio, fastify: bareFastify }[kind]
if (start === undefined) throw new Error(`unknown server kind ${kind}`)
const port = await start()
process.stdout.write(`${JSON.stringify({ port })}\n`)
// A clean exit on SIGTERM, so `--cpu-prof` can write its profile (run.ts stops servers with SIGKILL).
process.once('SIGTERM', () => process.exit(0))
