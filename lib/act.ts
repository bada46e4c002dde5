import { AsyncLocalStorage } from 'node:async_hooks'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, RouteShorthandOptions } from 'fastify'
import type { WebSocket } from 'ws'
import { errors } from './errors.js'
import { assertChannel } from './codec.js'
import type { Metadata } from './connection.js'
import type { Profile, TokenPayload } from './options.js'

/** What an act handler decided: the channel the connection starts in, and who it is. */
export interface UpgradePlan {
  channel: string
  ip: string
  /** `null` when none was given. */
  metadata: Metadata | null
  profile: Profile | null
  payload: TokenPayload | null
  logger: FastifyBaseLogger
  onBinary?: BinaryHandler | undefined
}

/** The value `ps.upgrade()` returns; an act handler returns it (as in Project Forge's `controller.Act`), though only the call matters. */
export interface UpgradeTicket {
  readonly channel: string
}

export type BinaryHandler = (data: Buffer, connectionId: string) => void | Promise<void>

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
  /** The request's child logger, with the act's name. */
  readonly logger: FastifyBaseLogger
  plan: UpgradePlan | null = null
  readonly #onBinary: BinaryHandler | undefined

  constructor (act: string, request: FastifyRequest, profile: P, claims: TokenPayload | null, onBinary?: BinaryHandler) {
    this.act = act
    this.request = request
    this.profile = profile
    this.claims = claims
    this.logger = request.log.child({ act })
    this.#onBinary = onBinary
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
  upgrade (channel: string, metadata?: Metadata, profile: Profile | null = this.profile, logger: FastifyBaseLogger = this.logger): UpgradeTicket {
    assertChannel(channel)
    this.plan = { channel, ip: this.request.ip, metadata: metadata ?? null, profile, payload: this.claims, logger, onBinary: this.#onBinary }
    return { channel }
  }

  /** Project Forge's spelling: `upgrade` with metadata. */
  upgradeWithMetadata (channel: string, metadata: Metadata): UpgradeTicket {
    return this.upgrade(channel, metadata)
  }
}

const current = new AsyncLocalStorage<PageState>()

/** Runs an act handler with its page state reachable from `app.socket.upgrade(...)`. */
export function runAct<T> (ps: PageState, fn: () => T): T {
  return current.run(ps, fn)
}

/** The page state of the act handler that is running, for `app.socket.upgrade(...)`; throws outside one. */
export function currentPageState (caller: string): PageState {
  const ps = current.getStore()
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
