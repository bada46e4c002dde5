import { readFileSync } from 'node:fs'
import type { FastifyInstance, FastifyReply, FastifyRequest, preValidationAsyncHookHandler } from 'fastify'
import type { WebSocket } from 'ws'
import { CloseCode, errors } from '../errors.js'
import { isSendableCloseCode } from '../protocol.js'
import { kAdmin } from '../symbols.js'
import { AdminTap } from './tap.js'
import type { Profile } from '../options.js'
import { AdminConnectionsQuerySchema, AdminDisconnectSchema, AdminSendSchema, type AdminConnectionsQuery, type AdminDisconnect, type AdminSend } from '../../schemas/admin.js'

/** The options of `forgeSocketAdmin`. */
export interface AdminOptions {
  /**
   * Who is an admin: called with the request and its verified profile (the token is checked as for act routes).
   * Required: registering the admin without it is an error at boot.
   */
  authorize: (request: FastifyRequest, profile: Profile) => boolean | Promise<boolean>
  /** A URL the page posts `{ name }` to, answering `{ token }` (the app's own login); without it, the page asks for a token. */
  login?: string
  /** Tap events carry each message's `param` (default false: cmd, channel and size only). */
  payloads?: boolean
  /** Bytes a tap's socket may hold unsent before its events are dropped and counted (default 1 MiB). */
  tapBufferLimit?: number
  /** Fastify's prefix, where the admin lives (e.g. `/admin/sockets`). */
  prefix?: string
}

/** The page's files, read once: `index.html`, `admin.js`, `admin.css`. */
const PAGE_DIR = new URL('./page/', import.meta.url)
const PAGE_FILES: Record<string, string> = { '': 'text/html; charset=utf-8', 'admin.js': 'text/javascript; charset=utf-8', 'admin.css': 'text/css; charset=utf-8' }
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache'
}

function checkOptions (app: FastifyInstance, options: AdminOptions): void {
  if (!app.hasDecorator('socket')) throw new errors.FST_SOCKET_INVALID_OPTIONS('forgeSocketAdmin needs forge-socket registered first')
  if (typeof options.authorize !== 'function') {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('forgeSocketAdmin needs /authorize: (request, profile) => boolean, who is an admin')
  }
  if (options.login !== undefined && (typeof options.login !== 'string' || options.login.length === 0)) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('forgeSocketAdmin /login must be a URL')
  }
  if (options.payloads !== undefined && typeof options.payloads !== 'boolean') throw new errors.FST_SOCKET_INVALID_OPTIONS('forgeSocketAdmin /payloads must be a boolean')
  const limit = options.tapBufferLimit
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1024)) throw new errors.FST_SOCKET_INVALID_OPTIONS('forgeSocketAdmin /tapBufferLimit must be an integer of at least 1024')
}

/**
 * The admin page, its JSON API and the tap, under the prefix the app registers it with (docs/observability.md).
 * Every route but the page's files and `api/config` is for admins only: a token verified as for act routes (401
 * without one), then `authorize` (403). The API takes the token from `Authorization: Bearer` only, never from a
 * cookie, so a page on another site can't make an admin's browser post to it. Not wrapped in fastify-plugin: its
 * routes and hooks stay under its prefix.
 *
 * @example
 * await app.register(forgeSocketAdmin, { prefix: '/admin/sockets', authorize: (request, profile) => profile.id === 'root' })
 */
export async function forgeSocketAdmin (app: FastifyInstance, options: AdminOptions): Promise<void> {
  checkOptions(app, options)
  const { auth, observer } = app.socket[kAdmin]()
  const payloads = options.payloads ?? false
  const bufferLimit = options.tapBufferLimit ?? 1024 * 1024
  const taps = new Set<WebSocket>()

  /** The request's admin, or the refusal: 401 without a valid token, 403 for one that is not an admin's. */
  const admit = async (request: FastifyRequest, bearerOnly: boolean): Promise<void> => {
    if (bearerOnly && typeof request.headers.authorization !== 'string') throw new errors.FST_SOCKET_TOKEN_MISSING()
    const { profile } = await auth.authenticate(request, true)
    if (!(await options.authorize(request, profile as Profile))) throw new errors.FST_SOCKET_FORBIDDEN('not an admin')
  }
  const api: preValidationAsyncHookHandler = async (request, reply) => {
    reply.header('cache-control', 'no-store')
    await admit(request, true)
  }

  for (const [file, type] of Object.entries(PAGE_FILES)) {
    const body = readFileSync(new URL(file === '' ? 'index.html' : file, PAGE_DIR))
    // The page at `<prefix>/` (its API and tap are relative to it); the bare prefix redirects there.
    app.get(`/${file}`, file === '' ? { prefixTrailingSlash: 'slash' } : {}, async (_request, reply) => await reply.headers(PAGE_HEADERS).type(type).send(body))
  }
  app.get('/', { prefixTrailingSlash: 'no-slash' }, async (request, reply) => await reply.redirect(`${request.url.split('?')[0] as string}/`))
  app.get('/api/config', async (_request, reply) => {
    reply.header('cache-control', 'no-store')
    return { login: options.login ?? null }
  })
  app.get('/api/status', { preValidation: api }, async () => ({ node: app.socket.status(), cluster: await app.socket.clusterStatus() }))
  app.get('/api/channels', { preValidation: api }, async () => ({ node: app.socket.nodeId, channels: app.socket.channels() }))
  app.get('/api/connections', { preValidation: api, schema: { querystring: AdminConnectionsQuerySchema } }, async (request) => {
    const { channel } = request.query as AdminConnectionsQuery
    return { node: app.socket.nodeId, connections: app.socket.connections(channel) }
  })
  app.post('/api/send', { preValidation: api, schema: { body: AdminSendSchema } }, async (request) => {
    const { channel, cmd, param } = request.body as AdminSend
    try {
      return { delivered: app.socket.broadcast(channel, { cmd, param: param ?? null }) }
    } catch (err) {
      // A message broadcast refuses is a bug in an app's code (500), and a bad input here: the admin's to fix.
      if ((err as { code?: unknown }).code === 'FST_SOCKET_INVALID_MESSAGE') throw new errors.FST_SOCKET_BAD_REQUEST((err as Error).message)
      throw err
    }
  })
  app.post('/api/disconnect', { preValidation: api, schema: { body: AdminDisconnectSchema } }, async (request) => {
    const { id, code = CloseCode.NORMAL, reason = 'disconnected by an admin' } = request.body as AdminDisconnect
    if (!isSendableCloseCode(code)) throw new errors.FST_SOCKET_BAD_REQUEST(`close code ${code} cannot be sent`)
    return { here: app.socket.disconnect(id, code, reason) }
  })

  app.get('/tap', {
    websocket: true,
    // Refused before the upgrade, as plain HTTP, like an act route's refusals.
    preValidation: async (request: FastifyRequest, _reply: FastifyReply) => {
      if (!request.ws) throw new errors.FST_SOCKET_UPGRADE_REQUIRED()
      await admit(request, false)
    }
  }, (socket) => {
    const tap = new AdminTap(socket, app.socket.nodeId, payloads, bufferLimit)
    const close = observer.tap(tap)
    taps.add(socket)
    // The tap only speaks: what an admin sends is ignored.
    socket.on('close', () => {
      close()
      taps.delete(socket)
    })
  })

  // Taps are no connections of forge-socket's: the node's drain does not close them, this does.
  app.addHook('preClose', (done) => {
    for (const socket of taps) socket.close(CloseCode.GOING_AWAY, 'server shutting down')
    done()
  })
}
