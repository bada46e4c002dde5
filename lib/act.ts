import { AsyncLocalStorage } from 'node:async_hooks'
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RouteShorthandOptions } from 'fastify'
import type { WebSocket } from 'ws'
import { errors, withRetryAfter } from './errors.js'
import { assertChannel } from './codec.js'
import { checkOrigin, type Authenticator } from './auth.js'
import { corkTick, directStream } from './frame.js'
import { parseSince } from './recovery.js'
import { kPlan, kResponse } from './symbols.js'
import type { BinaryHandler, Metadata, UpgradePlan } from './connection.js'
import type { Profile, TokenPayload } from './options.js'

/** The value `ps.upgrade()` returns; an act handler returns it (as in Project Forge's `controller.Act`), though only the call matters. */
export interface UpgradeTicket {
  readonly channel: string
}

/**
 * The page state `ps` an act handler receives: who is asking (`profile`, from the verified JWT), a logger, the
 * request, and `upgrade()` to accept. It lives until the handler returns; nothing here survives the upgrade but the
 * plan. `P` is `Profile` on routes whose auth is required (the default) and `Profile | null` on `auth: 'optional'`.
 */
export class PageState<P extends Profile | null = Profile | null> {
  readonly act: string
  readonly request: FastifyRequest
  /** The verified token's profile; `null` only on an `auth: 'optional'` route without a token. */
  readonly profile: P
  /** The verified token's claims (`exp`, `sub`, …), or `null`. */
  readonly claims: TokenPayload | null
  plan: UpgradePlan | null = null
  readonly #onBinary: BinaryHandler | undefined
  /** The address, where the upgrade read it (`undefined` without one, under `injectWS`); `null`: the connection reads it when asked. */
  readonly #ip: string | undefined | null
  #logger: FastifyBaseLogger | null = null

  constructor (act: string, request: FastifyRequest, profile: P, claims: TokenPayload | null, onBinary?: BinaryHandler, ip: string | undefined | null = null) {
    this.act = act
    this.#ip = ip
    this.request = request
    this.profile = profile
    this.claims = claims
    this.#onBinary = onBinary
  }

  /** The request's child logger, with the act's name (made when first asked for: most handlers never log). */
  get logger (): FastifyBaseLogger {
    return (this.#logger ??= this.request.log.child({ act: this.act }))
  }

  /**
   * A path parameter, else a query parameter, as a string. Missing (or empty) and required → 400
   * FST_SOCKET_MISSING_PARAMETER, before the upgrade.
   *
   * @example
   * const room = ps.requestString('room', true)
   */
  requestString (name: string, required: true): string
  requestString (name: string, required?: boolean): string | undefined
  requestString (name: string, required = false): string | undefined {
    const params = this.request.params as Record<string, unknown> | undefined
    const query = this.request.query as Record<string, unknown> | undefined
    const value = [params?.[name], query?.[name]].find((v): v is string => typeof v === 'string' && v.length > 0)
    if (value === undefined && required) throw new errors.FST_SOCKET_MISSING_PARAMETER(name)
    return value
  }

  /**
   * Accepts the upgrade: the connection starts as a member of `channel`, with optional metadata (reported by
   * `connections()`). An invalid channel name → 400 FST_SOCKET_INVALID_CHANNEL.
   *
   * @example
   * return ps.upgrade(`chat-room-${room}`, { room, user: ps.profile.id })
   */
  upgrade (channel: string, metadata?: Metadata, profile: Profile | null = this.profile, logger?: FastifyBaseLogger): UpgradeTicket {
    assertChannel(channel)
    const ip = this.#ip as string | null
    // The connection's logger is made when first used: from the one given, or ps.logger if the handler made it,
    // else from the request's with the act's name bound then (one child logger instead of two).
    const given = logger ?? this.#logger
    this.plan = {
      channel,
      ip,
      peer: ip === null ? this.request.raw.socket : null,
      metadata: metadata ?? null,
      profile,
      payload: this.claims,
      logger: given ?? this.request.log,
      act: given === null ? this.act : null,
      onBinary: this.#onBinary
    }
    return { channel }
  }

  /** Project Forge's spelling: `upgrade` with metadata. */
  upgradeWithMetadata (channel: string, metadata: Metadata): UpgradeTicket {
    return this.upgrade(channel, metadata)
  }
}

const current = new AsyncLocalStorage<PageState>()
/** The page state of the act handler running synchronously now, if any. */
let running: PageState | null = null
const AsyncFunction = (async () => {}).constructor

/**
 * Runs an act handler with its page state reachable from `app.socket.upgrade(...)`. A plain function is called
 * with the page state in a variable for its synchronous run. An `async` function is run in an AsyncLocalStorage,
 * so that `app.socket.upgrade` after an await finds it too: the first one enables Node 20's promise hooks for the
 * whole process, for good (every promise anywhere then takes V8's slower path: about 5 % of a handshake's CPU in
 * the bench), so a route that needs no await should not be an `async` function.
 */
export function runAct<T> (app: FastifyInstance, ps: PageState, handler: (app: FastifyInstance, ps: PageState) => T): T {
  if (handler instanceof AsyncFunction) return current.run(ps, handler, app, ps)
  const outer = running
  running = ps
  try {
    return handler(app, ps)
  } finally {
    running = outer
  }
}

/** The page state of the act handler that is running, for `app.socket.upgrade(...)`; throws outside one. */
export function currentPageState (caller: string): PageState {
  const ps = running ?? current.getStore()
  if (ps === undefined) throw new errors.FST_SOCKET_OUTSIDE_ACT(caller)
  return ps
}

/**
 * An act handler: decides, before the upgrade, whether and into which channel a request is upgraded. `P` is the
 * profile's type: `Profile` where a token is required, `Profile | null` on `auth: 'optional'` routes.
 */
export type ActHandler<P extends Profile | null = Profile> = (app: FastifyInstance, ps: PageState<P>) => UpgradeTicket | undefined | Promise<UpgradeTicket | undefined>

/** Per-route options of `app.socket.act`. */
export interface ActOptions {
  /** `'required'` (default): no token → 401. `'optional'`: anonymous connections get `profile: null`. */
  auth?: 'required' | 'optional'
  /** Accept binary frames on this route and hand them here; without it, a binary frame closes with 1003. */
  onBinary?: BinaryHandler
}

/** The route options `act` returns, for `app.get(url, ...)`. */
export type ActRouteOptions = RouteShorthandOptions & {
  websocket: true
  handler: (socket: WebSocket, request: FastifyRequest) => void
}

/** What the upgrade route needs of the socket lifecycle (lib/lifecycle.ts). */
export interface UpgradeGate {
  readonly closing: boolean
  /** Whether the upgrade's address decides something before it is accepted (a per-IP limit). */
  readonly addressNeeded: boolean
  admit (what: 'IP address' | 'user', key: string | null): void
  /** An upgrade refused before it happened, with what was thrown (counted by status). */
  refused (err: unknown): void
  accept (socket: WebSocket, plan: UpgradePlan, stream: Duplex | null): void
}

type UpgradingRequest = FastifyRequest & { [kPlan]?: UpgradePlan, [kResponse]?: ServerResponse }

/**
 * The route options of `app.socket.act(name, handler)`. The decision is made before the upgrade, in
 * `preValidation`: the refusals that need no token first (shutting down, not an upgrade, origin, the IP's limits),
 * then the token, the user's limits and the act handler, which accepts with `ps.upgrade(channel)` or refuses by
 * throwing (plain HTTP 4xx). @fastify/websocket then upgrades, and the lifecycle takes the socket.
 */
export function actRoute (gate: UpgradeGate, auth: Authenticator, origins: readonly string[] | undefined, name: string, handler: ActHandler<Profile | null>, options: ActOptions): ActRouteOptions {
  const required = (options.auth ?? 'required') === 'required'
  async function decide (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply): Promise<void> {
    // A node that is going away sends its clients elsewhere soon: they may try again in a second. (Checked
    // first: once closing, @fastify/websocket no longer upgrades, and `request.ws` is false.)
    if (gate.closing) throw withRetryAfter(new errors.FST_SOCKET_SHUTTING_DOWN(), 1000)
    if (!request.ws) throw new errors.FST_SOCKET_UPGRADE_REQUIRED()
    checkOrigin(request, origins)
    // The address is a system call (getpeername) to read: read now where it decides something (a per-IP limit)
    // or can't be read later (behind a proxy, with Fastify's trustProxy, it comes from X-Forwarded-For); else it is
    // the socket's, whatever trustProxy says, and the connection reads it from the socket when asked.
    const ip = gate.addressNeeded || request.headers['x-forwarded-for'] !== undefined ? request.ip as string | undefined : null
    // Before authenticate: this refusal needs no token, and verifying one may cost a JWKS fetch.
    if (gate.addressNeeded) gate.admit('IP address', ip as string | null)
    // A malformed position to recover from is refused before anything is verified or run.
    const since = parseSince((request.query as Record<string, unknown> | undefined)?.since)
    const { profile, payload } = await auth.authenticate(request, required)
    gate.admit('user', profile?.id ?? null)
    const ps = new PageState(name, request, profile, payload, options.onBinary, ip)
    // On a route whose auth is required, authenticate has refused every request without a profile.
    await runAct(this, ps, handler)
    if (ps.plan === null) throw new errors.FST_SOCKET_NOT_UPGRADED(name)
    ps.plan.since = since
    const upgrading = request as UpgradingRequest
    upgrading[kPlan] = ps.plan
    upgrading[kResponse] = reply.raw
    // The upgrade completes in this tick: ws's 101 answer and the `connected` frame then leave in one write
    // (one system call instead of two). Under `app.injectWS` there is no TCP socket, and nothing to cork.
    const tcp = request.raw.socket as Socket | undefined
    if (tcp !== undefined) corkTick(tcp)
  }
  return {
    websocket: true,
    async preValidation (request, reply) {
      try {
        await decide.call(this, request, reply)
      } catch (err) {
        gate.refused(err)
        throw err
      }
    },
    handler (socket, request) {
      const upgraded = request as UpgradingRequest
      // Nothing may keep the upgrade's request and response alive as long as the connection (a few KiB each):
      // the response @fastify/websocket gave the socket, to refuse with a status, is detached (and, where
      // @fastify/websocket's default error handler is in place, the lifecycle replaces the socket's 'error'
      // listener, which holds both).
      const response = upgraded[kResponse]
      if (response?.socket != null) response.detachSocket(response.socket)
      // preValidation always sets the plan before @fastify/websocket upgrades. Without a TCP socket
      // (`app.injectWS`), every frame goes through ws.
      gate.accept(socket, upgraded[kPlan] as UpgradePlan, directStream(socket.extensions, request.raw.socket as Socket | undefined))
    }
  }
}
