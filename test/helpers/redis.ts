import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { createRequire } from 'node:module'
import { Redis } from 'ioredis'
import type { RedisConstructor } from '../../lib/broker/redis-client.js'

/** ioredis 6's Redis: the copy @fastify/redis brings (the repository's own ioredis is 5). */
export const Redis6 = (createRequire(createRequire(import.meta.url).resolve('@fastify/redis'))('ioredis') as { Redis: RedisConstructor }).Redis

/** The redis-server binary, or null when this machine has none. */
export function redisServerBinary (): string | null {
  try {
    return execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim() || null
  } catch {
    return null
  }
}

/**
 * Skips the calling test file, with the reason printed, when there is no redis-server, except where
 * FORGE_SOCKET_REQUIRE_REDIS=1 (CI) makes that a failure. Returns whether the tests can run.
 */
export function requireRedis (t: Test): boolean {
  if (redisServerBinary() !== null) return true
  if (process.env.FORGE_SOCKET_REQUIRE_REDIS === '1') {
    t.fail('redis-server is required (FORGE_SOCKET_REQUIRE_REDIS=1) but not installed')
  } else {
    t.plan(0, 'no redis-server on this machine: the Redis broker tests are skipped (apt-get install redis-server)')
  }
  return false
}

async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/**
 * A redis-server of the test's own, on a free port, that the test can kill, freeze and restart. With `snapshots`, it
 * keeps its dump.rdb in a directory of its own: SAVE writes it, a restart loads it (SIGKILL saves nothing, so a
 * restart goes back to the last SAVE). Without, it starts empty every time.
 */
export class RedisProcess {
  readonly port: number
  /** The directory of its snapshot, or null. */
  readonly dir: string | null
  #child: ChildProcess | null = null

  private constructor (port: number, dir: string | null) {
    this.port = port
    this.dir = dir
  }

  static async start (t: Test, options: { snapshots?: boolean } = {}): Promise<RedisProcess> {
    const dir = options.snapshots === true ? await mkdtemp(join(tmpdir(), 'forge-socket-rdb-')) : null
    const redis = new RedisProcess(await freePort(), dir)
    t.after(async () => {
      await redis.stop()
      if (dir !== null) await rm(dir, { recursive: true, force: true })
    })
    await redis.restart()
    return redis
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  /** A client of the test's own on this server (with an error listener and a command timeout), quit after the test. */
  client (t: Test): Redis {
    const client = new Redis(this.url, { commandTimeout: 1000 })
    client.on('error', () => {})
    // The server may be gone by then (its own teardown, or a test that killed it): then there is nothing to quit.
    t.after(async () => { await client.quit().catch(() => { client.disconnect() }) })
    return client
  }

  /** Starts (again) on the same port and resolves once it accepts connections. */
  async restart (): Promise<void> {
    const snapshot = this.dir === null ? [] : ['--dir', this.dir, '--dbfilename', 'dump.rdb']
    const child = spawn(redisServerBinary() as string, ['--port', String(this.port), '--bind', '127.0.0.1', ...snapshot, '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] })
    this.#child = child
    let out = ''
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) resolve()
      })
      child.once('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out}`)))
    })
    child.stdout?.resume()
  }

  /** SIGKILL, and resolves once it is gone. */
  async kill (): Promise<void> {
    const child = this.#child
    if (child === null || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    this.#child = null
  }

  freeze (): void {
    this.#child?.kill('SIGSTOP')
  }

  thaw (): void {
    this.#child?.kill('SIGCONT')
  }

  async stop (): Promise<void> {
    this.thaw()
    await this.kill()
  }
}
