import type { Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import forgeSocket, { type ActOptions, type ForgeSocketOptions, type OutboundMessage } from '../../plugin.js'

export const SECRET = 'test-secret-that-is-long-enough-for-hs256'

/** Signs an HS256 token with the test secret (or the given key/algorithm). */
export function sign (claims: Record<string, unknown>, options: { key?: string, algorithm?: string, expiresIn?: number } = {}): string {
  const signer = createSigner({
    key: options.key ?? SECRET,
    algorithm: (options.algorithm ?? 'HS256') as 'HS256',
    ...(options.expiresIn !== undefined ? { expiresIn: options.expiresIn } : {})
  })
  return signer(claims)
}

/** A Fastify app with forge-socket registered, not yet listening. */
export async function build (options: ForgeSocketOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  // Presence at once (no gathering): tests of who is announced wait for each event in turn. Gathering, the cap
  // and the modes are tested with the default interval in test/presence.test.ts.
  await app.register(forgeSocket, { jwt: { secret: SECRET }, presence: { interval: 0 }, ...options })
  await setup?.(app)
  return app
}

/** Listens on a free port and returns the ws:// base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return address.replace(/^http/, 'ws')
}

/** The room route: `/ws/:room` upgrades into channel `room-<room>`. */
export function room (app: FastifyInstance, options: ActOptions = {}): void {
  app.get('/ws/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`), options))
}

/**
 * build()'s app with `setup`'s routes and hooks, then the room route (unless `setup` added its own `GET /ws/:room`),
 * listening on a free port and closed after the test. `base` is the ws:// base URL.
 */
export async function serve (t: Test, options: ForgeSocketOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(options, async (app) => {
    await setup?.(app)
    if (!app.hasRoute({ method: 'GET', url: '/ws/:room' })) room(app)
  })
  t.after(() => app.close())
  return { app, base: await listen(app) }
}

/** The connection id a `connected` message carries. */
export function idOf (connected: { param: unknown }): string {
  return (connected.param as { connectionId: string }).connectionId
}

/**
 * The server's close code of each connection, by id, from an onClose hook registered now (after the hooks already
 * there), so `wait(id)` resolves once the connection's close path ran: channels left, slot freed, presence sent.
 */
export function closes (app: FastifyInstance): { wait: (id: string) => Promise<number>, codes: Map<string, number> } {
  const codes = new Map<string, number>()
  const waiters = new Map<string, (code: number) => void>()
  app.socket.onClose((conn, code) => {
    codes.set(conn.id, code)
    waiters.get(conn.id)?.(code)
    waiters.delete(conn.id)
  })
  return {
    codes,
    wait: (id) => {
      const code = codes.get(id)
      return code !== undefined ? Promise.resolve(code) : new Promise((resolve) => waiters.set(id, resolve))
    }
  }
}

/** A test client: collects every message and lets a test wait for the next one that matches. */
export class Client {
  readonly ws: WebSocket
  readonly messages: OutboundMessage[] = []
  #waiters: Array<{ match: (m: OutboundMessage) => boolean, resolve: (m: OutboundMessage) => void, reject: (err: Error) => void }> = []
  /** Set once the socket has closed: a wait for a message that has not come then fails at once. */
  #closedWith: { code: number, reason: string } | null = null
  readonly closed: Promise<{ code: number, reason: string }>
  readonly opened: Promise<void>

  constructor (url: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}) {
    const { protocols, ...rest } = options
    this.ws = new WebSocket(url, protocols, rest)
    this.ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as OutboundMessage
      this.messages.push(message)
      const i = this.#waiters.findIndex((w) => w.match(message))
      if (i !== -1) this.#waiters.splice(i, 1)[0]?.resolve(message)
    })
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve())
      this.ws.once('error', reject)
    })
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.#closedWith = { code, reason: reason.toString() }
        for (const waiter of this.#waiters.splice(0)) waiter.reject(this.#closedError())
        resolve(this.#closedWith)
      })
    })
  }

  #closedError (): Error {
    const { code, reason } = this.#closedWith ?? { code: 0, reason: '' }
    return new Error(`the socket closed (${code}${reason === '' ? '' : ` ${reason}`}) before the message waited for came`)
  }

  /**
   * Resolves with the first message (already received or to come) for which `match` holds; rejects when the socket
   * closes first (a refused upgrade too), so a regression fails at once, not at tap's timeout. A wait nobody awaits
   * (a test that moved on) is no unhandled rejection.
   */
  next (match: string | ((m: OutboundMessage) => boolean)): Promise<OutboundMessage> {
    const fn = typeof match === 'string' ? (m: OutboundMessage) => m.cmd === match : match
    const seen = this.messages.findIndex(fn)
    if (seen !== -1) return Promise.resolve(this.messages.splice(seen, 1)[0] as OutboundMessage)
    const waiting = this.#closedWith !== null
      ? Promise.reject(this.#closedError())
      : new Promise<OutboundMessage>((resolve, reject) => this.#waiters.push({ match: fn, reject, resolve: (m) => { this.messages.splice(this.messages.indexOf(m), 1); resolve(m) } }))
    waiting.catch(() => {})
    return waiting
  }

  send (message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** Sends a message with a ref and resolves with its reply or error. */
  async request (channel: string, cmd: string, param: unknown, ref = Math.random().toString(36).slice(2)): Promise<OutboundMessage> {
    const answer = this.next((m) => m.ref === ref)
    this.send({ channel, cmd, param, ref })
    return await answer
  }

  close (): void {
    this.ws.close(1000)
  }
}

/** Connects with a token in the Authorization header and waits for `connected`. */
export async function connect (url: string, token?: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<{ client: Client, connected: OutboundMessage }> {
  const headers = { ...(options.headers ?? {}), ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) }
  const client = new Client(url, { ...options, headers })
  const connected = await client.next('connected')
  return { client, connected }
}

/** Attempts an upgrade that should be refused; resolves with the HTTP status and the JSON body. */
export function refused (url: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<{ status: number, body: { code?: string, message?: string, statusCode?: number }, headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const { protocols, ...rest } = options
    const ws = new WebSocket(url, protocols, rest)
    ws.on('open', () => { ws.terminate(); reject(new Error('the upgrade was accepted')) })
    ws.on('error', () => {})
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => {
        ws.terminate()
        resolve({ status: res.statusCode ?? 0, body: body.length > 0 ? JSON.parse(body) : {}, headers: res.headers })
      })
    })
  })
}
