// The demo page, with forge-socket's client, in Debian's Chromium driven by playwright-core: two people log in and
// chat, one gets a notification, the server is killed and restarted, and both pages recover: the restarted server's
// memory broker has new streams (reason epoch), so each page reloads its room and its notifications from the
// `history` command, and the chat goes on. Over Redis, a restarted server finds the streams as they were, so a page
// that reconnects to it gets exactly what it missed instead. And what a browser makes of a refused upgrade, whose
// status it cannot see.
import t from 'tap'
import { existsSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import fastifyStatic from '@fastify/static'
import { freePort, ROOT, startDemo, type DemoProcess } from './helpers/demo-process.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'
import { serve } from './helpers/server.js'
import { CuttingProxy } from './helpers/proxy.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const SECRET = 'browser-test-secret'
/** Every wait below is for an event on the page; this only bounds how long a broken run hangs. */
const WAIT = { timeout: 15_000 }

if (!existsSync(CHROMIUM)) {
  if (process.env.CI !== undefined || process.env.FORGE_SOCKET_REQUIRE_BROWSER === '1') {
    t.fail(`Chromium is required here but missing at ${CHROMIUM} (apt-get install chromium)`)
  } else {
    t.plan(0, `no Chromium at ${CHROMIUM}: install Debian's chromium to run the browser tests`)
  }
} else {
  // One browser for every test here (each gets its own pages): launched by the first that asks.
  let launched: Promise<Browser> | undefined
  const launch = (): Promise<Browser> => {
    launched ??= chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync']
    })
    return launched
  }
  t.teardown(async () => { await (await launched)?.close() })

  /** A page of the demo at `url`, logged in as `name` and in the lobby; its script errors go to `errors`. */
  async function open (url: string, name: string, errors: string[]): Promise<Page> {
    const page = await (await launch()).newPage({ viewport: { width: 1100, height: 720 } })
    page.on('pageerror', (err) => errors.push(`${name}: ${err.message}`))
    await page.goto(url)
    await page.fill('#name', name)
    await page.click('#login button')
    await page.waitForSelector('#notifications-status[data-state="open"]', WAIT)
    await page.fill('#room', 'lobby')
    await page.click('#join button')
    await page.waitForSelector('#chat-status[data-state="open"]', WAIT)
    return page
  }
  const chatLine = (page: Page, text: string): Promise<unknown> => page.waitForSelector(`#chat-log li:text-is("${text}")`, WAIT)
  const chatLines = (page: Page, text: string): Promise<number> => page.locator(`#chat-log li:text-is("${text}")`).count()
  async function say (page: Page, text: string): Promise<void> {
    await page.fill('#text', text)
    await page.click('#chat button')
  }

  t.test('two people chat in the demo page, and both recover from a server restart', async (t) => {
    const port = await freePort()
    let demo: DemoProcess = await startDemo({ port, secret: SECRET })
    t.after(() => demo.kill())
    const errors: string[] = []

    const ann = await open(demo.url, 'ann', errors)
    const bob = await open(demo.url, 'bob', errors)
    await chatLine(ann, '→ bob joined')
    t.pass('ann sees bob join')

    await say(bob, 'hello ann')
    await chatLine(ann, 'bob: hello ann')
    await chatLine(bob, 'bob: hello ann')
    t.pass('a chat message reaches both pages')

    await bob.fill('#to', 'ann')
    await bob.fill('#title', 'Ping')
    await bob.click('#notify button')
    await ann.waitForSelector('#notifications li:has-text("bob: Ping")', WAIT)
    t.equal(await bob.locator('#notifications li').count(), 0, 'only ann got the notification')

    await demo.kill('SIGKILL')
    for (const page of [ann, bob]) await page.waitForSelector('#chat-status[data-state="reconnecting"]', WAIT)
    t.pass('both pages notice the server is gone')
    await say(ann, 'sent while the server was down')

    demo = await startDemo({ port, secret: SECRET })
    for (const page of [ann, bob]) {
      await page.waitForSelector('#chat-status[data-state="open"]', WAIT)
      await page.waitForSelector('#notifications-status[data-state="open"]', WAIT)
    }
    t.pass('both pages reconnect to the restarted server')
    for (const [name, page] of [['ann', ann], ['bob', bob]] as const) {
      // A new memory broker: another stream, so nothing can be replayed, and the page reads the room again.
      await page.waitForSelector('#chat-recovery[data-recovered="false"][data-reason="epoch"]', WAIT)
      await page.waitForSelector('#chat-recovery:has-text("Reloaded after a server restart")', WAIT)
      await page.waitForSelector('#notifications-recovery[data-reason="epoch"]:has-text("Reloaded after a server restart")', WAIT)
      t.pass(`${name}'s page reports the recovery (reason epoch) and reloaded its room and notifications`)
      t.equal(await chatLines(page, 'bob: hello ann'), 0, `${name}: what was said before the restart is gone with the memory broker, and the page shows that`)
    }
    t.equal(await ann.locator('#notifications li:has-text("bob: Ping")').count(), 0, 'so is ann\'s notification')
    await chatLine(ann, 'ann: sent while the server was down')
    await chatLine(bob, 'ann: sent while the server was down')
    t.pass('the message queued while down is delivered after the reconnection (to bob, live or from the reload)')

    await say(bob, 'back again')
    await chatLine(ann, 'bob: back again')
    await say(ann, 'welcome back')
    await chatLine(bob, 'ann: welcome back')
    await chatLine(ann, 'ann: welcome back')
    await chatLine(bob, 'bob: back again')
    t.pass('the pages chat again')
    for (const [name, page] of [['ann', ann], ['bob', bob]] as const) {
      const counts = await Promise.all(['ann: sent while the server was down', 'bob: back again', 'ann: welcome back'].map((text) => chatLines(page, text)))
      t.same(counts, [1, 1, 1], `${name} shows each message after the restart exactly once`)
    }

    const shot = join(tmpdir(), 'forge-socket-demo.png')
    await ann.screenshot({ path: shot })
    t.ok((await stat(shot)).size > 10_000, `screenshot taken: ${shot}`)
    t.same(errors, [], 'no script errors on the pages')
  })

  t.test('a chat message whose answer is lost with the connection is sent again and shown once: the server answers the repeat from its record', async (t) => {
    const demo = await startDemo({ port: await freePort(), secret: SECRET, logLevel: 'debug' })
    t.after(() => demo.kill())
    // ann's page (and its WebSockets) go through a proxy that can drop a connection between the server's write and
    // the page's read; bob's go straight to the demo.
    const proxy = await CuttingProxy.start(t, demo.port)
    const errors: string[] = []
    const ann = await open(`http://127.0.0.1:${proxy.port}`, 'ann', errors)
    const bob = await open(demo.url, 'bob', errors)
    await chatLine(ann, '→ bob joined')

    // The handler runs and broadcasts; the answer to ann's request is lost, and her connection with it.
    const cut = proxy.cutBefore('"cmd":"reply"')
    await say(ann, 'said once')
    await cut
    await chatLine(bob, 'ann: said once')
    await ann.waitForSelector('#chat-status[data-state="reconnecting"]', WAIT)
    await ann.waitForSelector('#chat-status[data-state="open"]', WAIT)
    // The page's client sends the unanswered request again, with its id: the demo answers it from the record.
    const repeat = (): boolean => demo.logs.some((line) => line.msg === 'a repeated message id: answered, not run')
    for (let i = 0; i < 300 && !repeat(); i++) await new Promise((resolve) => setTimeout(resolve, 50))
    t.ok(repeat(), 'the demo got the request again and did not run it')

    // Everything the channel had before bob's next message reached bob first: the message was broadcast once.
    await say(bob, 'after the cut')
    await chatLine(bob, 'bob: after the cut')
    await chatLine(ann, 'bob: after the cut')
    await chatLine(ann, 'ann: said once')
    for (const [name, page] of [['ann', ann], ['bob', bob]] as const) {
      t.equal(await chatLines(page, 'ann: said once'), 1, `${name} shows it once`)
      t.equal(await page.locator('#chat-log li:has-text("error ")').count(), 0, `${name}: no error line (the request was answered)`)
    }
    t.same(errors, [], 'no script errors on the pages')
  })

  t.test('over Redis, a page whose server restarts recovers the messages it missed, each once and in order', async (t) => {
    if (!requireRedis(t)) return
    // Two demo nodes on one redis-server: ann's page on A, bob's on B, in the same room.
    const redis = await RedisProcess.start(t)
    const env = { REDIS_URL: redis.url }
    const aPort = await freePort()
    let a: DemoProcess = await startDemo({ port: aPort, secret: SECRET, env })
    t.after(() => a.kill())
    const b = await startDemo({ port: await freePort(), secret: SECRET, env })
    t.after(() => b.kill())
    const errors: string[] = []
    // The room's numbered lines (its history: chat messages, not presence), oldest first.
    const kept = async (page: Page): Promise<string[]> => (await page.locator('#chat-log li[data-channel]').allTextContents()).reverse()

    const ann = await open(a.url, 'ann', errors)
    const bob = await open(b.url, 'bob', errors)
    for (const page of [ann, bob]) t.after(() => page.close())
    await chatLine(ann, '→ bob joined')
    await say(bob, 'before the restart')
    await chatLine(ann, 'bob: before the restart')
    t.pass('ann on A hears bob on B')

    await a.kill('SIGKILL')
    await ann.waitForSelector('#chat-status[data-state="reconnecting"]', WAIT)
    const missed = ['missed 1', 'missed 2', 'missed 3']
    for (const text of missed) await say(bob, text)
    // B shows a message of a channel with history once Redis has appended it: all three are in the stream now.
    await chatLine(bob, 'bob: missed 3')
    t.pass('bob says three things while A is down')

    a = await startDemo({ port: aPort, secret: SECRET, env })
    await ann.waitForSelector('#chat-status[data-state="open"]', WAIT)
    await ann.waitForSelector('#chat-recovery[data-recovered="true"][data-reason=""]:text-is("Recovered 3 missed messages.")', WAIT)
    t.pass('ann\'s page reconnects to the restarted A by itself and reports the three it missed as recovered')
    await chatLine(ann, 'bob: missed 3')
    const before = ['bob: before the restart', ...missed.map((text) => `bob: ${text}`)]
    t.same(await kept(ann), before, 'the replay shows each missed message once, in order, after what ann had')

    await say(bob, 'live again')
    await chatLine(ann, 'bob: live again')
    const all = [...before, 'bob: live again']
    t.same(await kept(ann), all, 'then a live message arrives once, after the replay')
    t.same(await kept(bob), all, 'bob\'s page, on B all along, shows the same')
    t.equal(await ann.locator('#chat-recovery').textContent(), 'Recovered 3 missed messages.', 'no later recovery replaced it')
    await ann.waitForSelector('#notifications-recovery[data-recovered="true"]:text-is("Recovered 0 missed messages.")', WAIT)
    t.pass('ann\'s notifications (user-ann, kept in Redis too) recover as well, with nothing to replay')
    t.equal(await ann.locator('.status:has-text("Reloaded")').count(), 0, 'nothing was reloaded')
    t.same(errors, [], 'no script errors on the pages')
  })

  t.test('a refused upgrade is reported as a failed handshake, and reconnect.maxAttempts ends the retries', async (t) => {
    // forge-socket in this process (no demo to start), serving an empty page and the built client beside it.
    const clientDir = join(ROOT, 'dist', 'lib', 'client')
    if (!existsSync(join(clientDir, 'index.js'))) return t.fail(`${clientDir} is missing: run \`npm run build\` first (npm test does it in pretest)`)
    let upgrades = 0
    const { app, base } = await serve(t, {}, async (app) => {
      await app.register(fastifyStatic, { root: clientDir, prefix: '/client/' })
      app.get('/', (_request, reply) => reply.type('text/html').send('<!doctype html><title>forge-socket</title>'))
    })
    app.server.prependListener('upgrade', () => { upgrades++ })
    const origin = base.replace(/^ws/, 'http')
    const page = await (await launch()).newPage()
    t.after(() => page.close())
    const pageErrors: string[] = []
    page.on('pageerror', (err) => pageErrors.push(err.message))
    await page.goto(origin)
    // Without a token the route refuses with 401 before the upgrade. Run in the page; it rejects (and the test
    // fails with what it saw) if the socket is not closed within WAIT.
    const seen = await page.evaluate(`(async () => {
      const { Socket } = await import('/client/index.js')
      const errors = []
      const states = []
      let attempts = 0
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('not closed in time: ' + JSON.stringify({ errors, states }))), ${WAIT.timeout})
        new Socket({
          url: '/ws/a',
          reconnect: { initialDelay: 10, maxDelay: 50, maxAttempts: 2 },
          debug: true,
          logger: (line) => { if (line.startsWith('[forge-socket] connect ')) attempts++ },
          onError: (e) => errors.push({ code: e.code, closeCode: e.closeCode ?? null, status: e.status ?? null }),
          onStateChange: (state) => {
            states.push(state)
            if (state !== 'closed') return
            clearTimeout(timer)
            resolve()
          }
        })
      })
      return { errors, states, attempts }
    })()`)
    const failed = { code: 'FST_SOCKET_HANDSHAKE_FAILED', closeCode: 1006, status: null }
    t.same(seen, {
      errors: [failed, failed, failed, { code: 'FST_SOCKET_MAX_ATTEMPTS', closeCode: null, status: null }],
      states: ['reconnecting', 'closed'],
      attempts: 3
    }, 'each refused attempt reported without a status (the browser hides it); given up after two more')
    t.equal(upgrades, 3, 'the server refused three upgrades')
    t.same(pageErrors, [])
  })
}
