// The admin page of the demo (/admin/sockets/), in Debian's Chromium driven by playwright-core: an admin logs in
// with the demo's login, a new connection appears without a reload, a message sent from the form reaches the
// client, the Disconnect button closes it; a user who is not an admin is told so.
import t from 'tap'
import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import { connect } from './helpers/server.js'
import { demoLogin, freePort, startDemo } from './helpers/demo-process.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
/** Every wait below is for an event on the page; this only bounds how long a broken run hangs. */
const WAIT = { timeout: 15_000 }

if (!existsSync(CHROMIUM)) {
  if (process.env.CI !== undefined || process.env.FORGE_SOCKET_REQUIRE_BROWSER === '1') {
    t.fail(`Chromium is required here but missing at ${CHROMIUM} (apt-get install chromium)`)
  } else {
    t.plan(0, `no Chromium at ${CHROMIUM}: install Debian's chromium to run the browser tests`)
  }
} else {
  let browser: Browser | undefined
  t.teardown(async () => { await browser?.close() })

  t.test('an admin watches connections live, sends to a channel and disconnects a client', async (t) => {
    const demo = await startDemo({ port: await freePort(), secret: 'admin-browser-secret', env: { ADMIN_USERS: 'admin,root' } })
    t.after(() => demo.kill())
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync']
    })
    const errors: string[] = []

    t.test('a user who is not an admin is refused', async (t) => {
      const page = await (browser as Browser).newPage()
      page.on('pageerror', (err) => errors.push(err.message))
      await page.goto(`${demo.url}/admin/sockets/`)
      await page.fill('input[name="name"]', 'ann')
      await page.click('#login button[type="submit"]')
      await page.waitForSelector('#notice:text("not an admin")', WAIT)
      t.ok(await page.isHidden('#console'), 'the console stays hidden')
      await page.close()
    })

    t.test('an admin', async (t) => {
      const page = await (browser as Browser).newPage()
      page.on('pageerror', (err) => errors.push(err.message))
      await page.goto(`${demo.url}/admin/sockets`)
      t.match(page.url(), /\/admin\/sockets\/$/, 'the bare prefix redirects to the page')
      await page.fill('input[name="name"]', 'admin')
      await page.click('#login button[type="submit"]')
      await page.waitForSelector('#nodes tbody tr', WAIT)
      t.match(await page.textContent('#nodes tbody'), /this one/, 'the node is listed')
      await page.waitForSelector('#tap-state:text("live")', WAIT)

      // A client connects: its row appears from the tap, without a reload.
      const { client, connected } = await connect(`${demo.wsUrl}/ws/chat/lobby`, await demoLogin(demo.url, 'bob'))
      const id = (connected.param as { connectionId: string }).connectionId
      const row = `#connections tr[data-connection="${id}"]`
      await page.waitForSelector(row, WAIT)
      t.match(await page.textContent(row), /bob/)
      await page.waitForSelector('#events li:text("open")', WAIT)

      // A message from the send form reaches the client.
      const notice = client.next('admin-notice')
      await page.fill('#send input[name="channel"]', 'chat-room-lobby')
      await page.fill('#send input[name="cmd"]', 'admin-notice')
      await page.fill('#send textarea[name="param"]', '{"text":"maintenance at noon"}')
      await page.click('#send button[type="submit"]')
      t.match(await notice, { channel: 'chat-room-lobby', cmd: 'admin-notice', param: { text: 'maintenance at noon' } })
      await page.waitForSelector('#send-result:text("delivered to 1")', WAIT)

      // The row's Disconnect button closes the client, and the row goes.
      await page.click(`${row} button`)
      t.equal((await client.closed).code, 1000)
      await page.waitForSelector(row, { ...WAIT, state: 'detached' })
      t.same(errors, [], 'no script errors on the page')
      await page.close()
    })
  })
}
