// Processes the bench starts beside its servers: a free port to put them on, a redis-server of its own, the kill.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { createInterface } from 'node:readline'

/** A TCP port nothing listens on now. */
export async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/** SIGKILL, and resolves once the process is gone. */
export async function stop (proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return
  const exited = once(proc, 'exit')
  proc.kill('SIGKILL')
  await exited
}

/** A redis-server of the bench's own (no persistence), on a free port; null when the machine has none. */
export async function startRedis (): Promise<{ url: string, stop: () => Promise<void> } | null> {
  let binary: string
  try {
    binary = execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim()
  } catch {
    return null
  }
  const port = await freePort()
  const proc = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream })
  for await (const line of lines) if (line.includes('Ready to accept connections')) break
  proc.stdout?.resume()
  return { url: `redis://127.0.0.1:${port}`, stop: async () => { await stop(proc) } }
}
