import { createServer, connect, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import type { Test } from 'tap'

/**
 * A TCP proxy to 127.0.0.1:`port` that can lose a connection at the worst moment: once armed with `cutBefore(text)`,
 * the first chunk from the server that holds `text` is not forwarded, and that connection is dropped on both
 * sides, as a network that fails between the server's write and the client's read. Everything else passes as is.
 */
export class CuttingProxy {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  #armed: { text: string, cut: () => void } | null = null

  private constructor (server: Server) {
    this.#server = server
  }

  static async start (t: Test, port: number): Promise<CuttingProxy> {
    const server = createServer()
    const proxy = new CuttingProxy(server)
    server.on('connection', (client) => proxy.#pipe(client, port))
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.after(() => proxy.close())
    return proxy
  }

  get port (): number {
    return (this.#server.address() as { port: number }).port
  }

  /** Resolves once a chunk from the server held `text` and its connection was cut. */
  cutBefore (text: string): Promise<void> {
    return new Promise((resolve) => { this.#armed = { text, cut: resolve } })
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    this.#server.close()
    await once(this.#server, 'close')
  }

  #pipe (client: Socket, port: number): void {
    const upstream = connect(port, '127.0.0.1')
    for (const socket of [client, upstream]) {
      this.#sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => {
        this.#sockets.delete(socket)
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.on('data', (chunk: Buffer) => {
      const armed = this.#armed
      if (armed !== null && chunk.includes(armed.text)) {
        this.#armed = null
        client.destroy()
        upstream.destroy()
        armed.cut()
        return
      }
      client.write(chunk)
    })
  }
}
