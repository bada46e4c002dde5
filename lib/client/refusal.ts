/** A longer Retry-After is cut to this (5 minutes): a server that wants its clients away longer refuses again then. */
export const RETRY_AFTER_CAP = 300_000

/** The most of a refusal's body read for its code; Fastify's JSON error body is a few hundred bytes. */
const MAX_BODY = 4096

/** The part of Node's `http.IncomingMessage` that `ws` hands to its 'unexpected-response' event. */
export interface UpgradeResponse {
  readonly statusCode?: number | undefined
  readonly headers: Readonly<Record<string, string | string[] | undefined>>
  setEncoding (encoding: 'utf8'): unknown
  on (event: 'data', listener: (chunk: string) => void): unknown
  on (event: 'end' | 'error' | 'close', listener: () => void): unknown
}

/** What a server that refused the upgrade said. */
export interface Refusal {
  readonly status: number
  /** The Retry-After header in ms (at most RETRY_AFTER_CAP); 0 without one. */
  readonly retryAfter: number
  /** The `code` of its JSON error body, once read. */
  serverCode: string | undefined
}

/** `ws`'s WebSocket is an EventEmitter with this event; a browser's WebSocket has no `on` at all. */
interface RefusalSource {
  on (event: 'unexpected-response', listener: (request: unknown, response: UpgradeResponse) => void): unknown
}

/**
 * Watches a `ws` WebSocket for an upgrade answered with a status instead of 101. `onRefusal` gets the status and
 * Retry-After at once; `onRead` follows when the body has been read (to its end, or MAX_BODY characters), with the
 * body's code filled in. With a listener on the event, `ws` neither errors nor closes by itself: the caller aborts
 * the handshake (`close()`) from `onRead`. A browser's WebSocket cannot show the status: nothing is watched there.
 *
 * @example
 * watchRefusal(ws, (refusal) => { seen = refusal }, () => ws.close())
 */
export function watchRefusal (ws: unknown, onRefusal: (refusal: Refusal) => void, onRead: () => void): void {
  const source = ws as Partial<RefusalSource>
  if (typeof source.on !== 'function') return
  source.on('unexpected-response', (_request, response) => {
    const refusal: Refusal = { status: response.statusCode ?? 0, retryAfter: retryAfterMs(response.headers['retry-after']), serverCode: undefined }
    onRefusal(refusal)
    let body = ''
    let done = false
    const finish = (): void => {
      if (done) return
      done = true
      refusal.serverCode = codeOf(body)
      onRead()
    }
    response.setEncoding('utf8')
    response.on('data', (chunk) => {
      body += chunk
      if (body.length >= MAX_BODY) finish()
    })
    response.on('end', finish)
    response.on('error', finish)
    response.on('close', finish)
  })
}

/**
 * A Retry-After header (delay-seconds or an HTTP date) in ms from `now`, between 0 and RETRY_AFTER_CAP; 0 when
 * there is none or it cannot be read.
 *
 * @example
 * retryAfterMs('120')                            // 120000
 * retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT')  // 0: in the past
 */
export function retryAfterMs (header: string | string[] | undefined, now = Date.now()): number {
  const value = (Array.isArray(header) ? header[0] : header)?.trim()
  if (value === undefined || value.length === 0) return 0
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - now
  return Number.isNaN(ms) ? 0 : Math.min(RETRY_AFTER_CAP, Math.max(0, ms))
}

/** The `code` of a Fastify error body (`{ statusCode, code, error, message }`), if it has a plausible one. */
function codeOf (body: string): string | undefined {
  let parsed: unknown
  try {
    parsed = JSON.parse(body)
  } catch {
    return undefined
  }
  const code = typeof parsed === 'object' && parsed !== null ? (parsed as { code?: unknown }).code : undefined
  return typeof code === 'string' && /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/.test(code) ? code : undefined
}
