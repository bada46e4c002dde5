// The load generator's WebSocket client: the HTTP upgrade, then frames read and written by hand (RFC 6455), so a
// received message costs a few comparisons instead of ws's full receive path, and the load generator is not the
// bottleneck of the servers it measures. Text frames only; no fragmentation, no extensions (none is offered).
import { request } from 'node:http'
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'

export class LiteSocket {
  readonly #socket: Socket
  #handler: ((payload: Buffer) => void) | null = null
  /** Bytes not yet handed out: part of a frame, or frames that came before there was a handler. */
  #pending: Buffer | null = null

  private constructor (socket: Socket, head: Buffer) {
    this.#socket = socket
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.#read(chunk))
    socket.on('error', () => {})
    if (head.length > 0) this.#pending = Buffer.from(head)
  }

  /** Gets every whole text frame's payload (a view into the read buffer: copy it to keep it). */
  set onMessage (handler: (payload: Buffer) => void) {
    const first = this.#handler === null
    this.#handler = handler
    // What arrived with the upgrade answer (a first message) waited for this.
    if (first && this.#pending !== null) this.#read(Buffer.alloc(0))
  }

  /** Upgrades `GET path` on 127.0.0.1:port with the given headers; rejects on any other answer. */
  static connect (port: number, path: string, headers: Record<string, string>): Promise<LiteSocket> {
    return new Promise((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port,
        path,
        headers: { ...headers, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') }
      })
      req.on('upgrade', (_res, socket, head) => resolve(new LiteSocket(socket, head)))
      req.on('response', (res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode ?? 0}`)))
      req.on('error', reject)
      req.end()
    })
  }

  /**
   * Sends a text frame. A client must mask its frames; this one uses a zero mask, which leaves the payload as it
   * is, so a message costs one buffer and no per-byte work. The mask's randomness guards against proxies that
   * cache, and there is none on loopback; the servers unmask whatever the mask is.
   */
  send (text: string): void {
    const length = Buffer.byteLength(text)
    const header = length < 126 ? 2 : length < 65536 ? 4 : 10
    const frame = Buffer.allocUnsafe(header + 4 + length)
    frame[0] = 0x81
    if (header === 2) {
      frame[1] = 0x80 | length
    } else if (header === 4) {
      frame[1] = 0x80 | 126
      frame.writeUInt16BE(length, 2)
    } else {
      frame[1] = 0x80 | 127
      frame.writeUInt32BE(0, 2)
      frame.writeUInt32BE(length, 6)
    }
    frame.writeUInt32BE(0, header)
    frame.write(text, header + 4)
    this.#socket.write(frame)
  }

  terminate (): void {
    this.#socket.destroy()
  }

  get open (): boolean {
    return !this.#socket.destroyed
  }

  #read (chunk: Buffer): void {
    const data = this.#pending === null ? chunk : Buffer.concat([this.#pending, chunk])
    this.#pending = null
    const handler = this.#handler
    if (handler === null) {
      this.#pending = Buffer.from(data)
      return
    }
    let offset = 0
    while (data.length - offset >= 2) {
      const opcode = (data[offset] as number) & 0x0f
      const short = (data[offset + 1] as number) & 0x7f
      const header = short < 126 ? 2 : short === 126 ? 4 : 10
      if (data.length - offset < header) break
      const length = short < 126 ? short : short === 126 ? data.readUInt16BE(offset + 2) : data.readUInt32BE(offset + 6)
      if (data.length - offset < header + length) break
      const payload = data.subarray(offset + header, offset + header + length)
      offset += header + length
      if (opcode === 1) handler(payload)
      else if (opcode === 9) this.#pong(payload)
    }
    if (offset < data.length) this.#pending = Buffer.from(data.subarray(offset))
  }

  #pong (payload: Buffer): void {
    const frame = Buffer.alloc(6 + payload.length)
    frame[0] = 0x8a
    frame[1] = 0x80 | payload.length
    // A zero mask leaves the payload as it is.
    payload.copy(frame, 6)
    this.#socket.write(frame)
  }
}
