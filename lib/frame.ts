import type { Duplex } from 'node:stream'

/**
 * A whole server-to-client WebSocket text frame (RFC 6455 §5.2: FIN, opcode 1, unmasked) of `text`, encoded as
 * UTF-8 straight into the frame: made once per broadcast, so the same bytes are written to every recipient.
 *
 * @example
 * const frame = textFrame('{"cmd":"hi"}')   // 0x81 0x0c …
 */
export function textFrame (text: string): Buffer {
  const length = Buffer.byteLength(text)
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(header + length)
  frame[0] = 0x81
  if (header === 2) {
    frame[1] = length
  } else if (header === 4) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(0, 2)
    frame.writeUInt32BE(length, 6)
  }
  frame.write(text, header, 'utf8')
  return frame
}

/** The length of the header of a frame `textFrame` made. */
export function headerLength (frame: Buffer): number {
  const short = (frame[1] as number) & 0x7f
  return short < 126 ? 2 : short === 126 ? 4 : 10
}

/** The payload of a frame `textFrame` made (a view, not a copy). */
export function framePayload (frame: Buffer): Buffer {
  return frame.subarray(headerLength(frame))
}

/**
 * The TCP stream under a ws connection, when frames may be written to it directly: only without
 * permessage-deflate (then ws's sender never queues, and every ws write is as synchronous as ours, so the order
 * of frames holds). Otherwise null, and frames go through `ws.send`.
 */
export function directStream (extensions: string, stream: unknown): Duplex | null {
  if (extensions !== '' || typeof stream !== 'object' || stream === null) return null
  const candidate = stream as Partial<Duplex>
  return typeof candidate.write === 'function' && typeof candidate.cork === 'function' ? stream as Duplex : null
}

/** Streams corked in this tick (once for each `cork`); uncorked together when the tick's work is done. */
let corked: Duplex[] = []
/** Which tick this is: advanced each time the corked streams are uncorked, so a stamp of an earlier one is stale. */
let tick = 1

function uncorkAll (): void {
  const streams = corked
  corked = []
  tick++
  for (const stream of streams) stream.uncork()
}

function cork (stream: Duplex): void {
  stream.cork()
  corked.push(stream)
  if (corked.length === 1) process.nextTick(uncorkAll)
}

/**
 * Writes a frame to a stream, corked until the end of the current tick: a burst of broadcasts handled in one
 * tick reaches each socket in one write (one system call) instead of one per message. Order is kept with
 * everything else written to the stream (ws's own writes join the same corked buffer), and the send buffer's
 * size (`bufferedAmount`) counts what waits.
 *
 * `corkedIn` is what this returned for the stream's last write (0 at first): the stream is corked once a tick,
 * told by comparing two numbers, with no set of the tick's streams to look it up in (a broadcast writes to every
 * member). Returns the stamp to keep for the next write.
 */
export function writeFrame (stream: Duplex, frame: Buffer, corkedIn: number): number {
  if (corkedIn !== tick) cork(stream)
  stream.write(frame)
  return tick
}

/** Corks a stream until the end of the current tick (the upgrade's answer and the `connected` frame leave together). */
export function corkTick (stream: Duplex): void {
  cork(stream)
}

/**
 * ws's `maxBufferedChunks` for forge-socket's server: the TCP reads one frame may arrive in before it is whole. ws
 * keeps each read as a Buffer of its own until the frame is complete, about 190 bytes each however few bytes it
 * carries, and allows 262,144 of them: a client sending one byte per packet held 3.7 MiB with 20,000 bytes of a
 * frame. A frame of `maxPayload` bytes needs no more reads than this even in TCP's smallest segments (536 bytes);
 * one more closes the connection with 1008.
 *
 * @example
 * bufferedChunksAllowed(65536)   // 128
 */
export function bufferedChunksAllowed (maxPayload: number): number {
  return Math.max(64, Math.ceil(maxPayload / 512))
}
