import type { Test } from 'tap'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'
import { Socket, type Message, type SocketError, type SocketOptions, type SocketState } from '../../lib/client/index.js'

/**
 * Resolves when `socket` is in `state`: at once if it already is, else at the transition. Rejects when the socket
 * closes for good first, so a test waiting for `open` fails with a reason instead of hanging.
 */
export function inState (socket: Socket, state: SocketState): Promise<void> {
  if (socket.state === state) return Promise.resolve()
  if (socket.state === 'closed') return Promise.reject(new Error(`the socket is closed: it will never be "${state}"`))
  return new Promise((resolve, reject) => {
    const off = socket.onStateChange((now) => {
      if (now !== state && now !== 'closed') return
      off()
      if (now === state) resolve()
      else reject(new Error(`the socket closed while waiting for "${state}"`))
    })
  })
}

/** Resolves when `socket` has gone down and come back up (`open` → `reconnecting` → `open`). */
export async function reconnected (socket: Socket): Promise<void> {
  await inState(socket, 'reconnecting')
  await inState(socket, 'open')
}

/** A list that a test can wait on: `until(check)` resolves once `check(items)` holds. */
export class Seen<T> {
  readonly items: T[] = []
  readonly #waiters = new Set<{ check: (items: T[]) => boolean, resolve: () => void }>()

  push (item: T): void {
    this.items.push(item)
    for (const waiter of this.#waiters) {
      if (!waiter.check(this.items)) continue
      this.#waiters.delete(waiter)
      waiter.resolve()
    }
  }

  until (check: (items: T[]) => boolean): Promise<void> {
    if (check(this.items)) return Promise.resolve()
    return new Promise((resolve) => this.#waiters.add({ check, resolve }))
  }

  count (n: number): Promise<void> {
    return this.until((items) => items.length >= n)
  }
}

export interface RecordedClient {
  socket: Socket
  errors: Seen<SocketError>
  /** `previous>state` */
  states: Seen<string>
  /** Debug lines, with their `[forge-socket] ` tag. */
  lines: Seen<string>
  /** The connectionId at each `onOpen`. */
  opens: Seen<string | null>
}

/**
 * A Socket with `ws`, short reconnect delays, every error, state change, debug line and `onOpen` recorded; closed
 * when the test ends.
 */
export function recordedClient (t: Test, options: Partial<SocketOptions> & { url: string }): RecordedClient {
  const errors = new Seen<SocketError>()
  const states = new Seen<string>()
  const lines = new Seen<string>()
  const opens = new Seen<string | null>()
  const socket: Socket = new Socket({
    WebSocket,
    reconnect: { initialDelay: 20, maxDelay: 200 },
    debug: true,
    logger: (line) => lines.push(line),
    onError: (err) => errors.push(err),
    onStateChange: (state, previous) => states.push(`${previous}>${state}`),
    onOpen: () => opens.push(socket.connectionId),
    ...options
  })
  t.after(() => socket.close())
  return { socket, errors, states, lines, opens }
}

/** Fails with `what` instead of hanging until tap's file timeout, if `promise` takes longer than `ms`. */
export async function within<T> (promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}

/** The rejection of `promise` (fails the test if it resolves). */
export async function rejection (promise: Promise<unknown>): Promise<SocketError> {
  try {
    await promise
  } catch (err) {
    return err as SocketError
  }
  throw new Error('expected a rejection')
}

/** The debug lines of `client` without their tag, that start with `prefix`. */
export function linesStarting (client: RecordedClient, prefix: string): string[] {
  return client.lines.items.map((l) => l.replace('[forge-socket] ', '')).filter((l) => l.startsWith(prefix))
}

/**
 * A raw `ws` server, for a test that needs a server that misbehaves: it sends a hand-made `connected` (on channel
 * `home`, connectionId `raw-<n>` for the n-th connection, and what `greeting(n)` adds to its param), records every
 * message, and then does what `behave` says (nothing, by default).
 */
export async function rawServer (t: Test, behave: (ws: WebSocket, n: number) => void = () => {}, greeting: (n: number) => Record<string, unknown> = () => ({})): Promise<{ url: string, connections: Seen<WebSocket>, received: Seen<{ n: number, message: Message }> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  await once(wss, 'listening')
  const connections = new Seen<WebSocket>()
  const received = new Seen<{ n: number, message: Message }>()
  wss.on('connection', (ws) => {
    const n = connections.items.length
    connections.push(ws)
    ws.on('message', (data) => received.push({ n, message: JSON.parse(String(data)) as Message }))
    ws.send(JSON.stringify({ channel: 'home', cmd: 'connected', param: { connectionId: `raw-${n}`, channels: ['home'], ...greeting(n) } }))
    behave(ws, n)
  })
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate()
    wss.close()
    await once(wss, 'close')
  })
  const { port } = wss.address() as AddressInfo
  return { url: `ws://127.0.0.1:${port}/ws`, connections, received }
}
