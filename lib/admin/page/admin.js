// The admin page of forge-socket (lib/admin/plugin.ts): plain browser JavaScript, no build step. Every URL is
// relative to the page, so the admin works under any prefix. Whatever comes from the server is shown with
// textContent, never as HTML.
const $ = (selector) => document.querySelector(selector)
const TOKEN_KEY = 'forge-socket-admin-token'
const MAX_EVENTS = 200

let token = sessionStorage.getItem(TOKEN_KEY)
let tap = null
let tapRetry = 500
let refreshTimer = null
const connections = new Map()

function notice (text) {
  $('#notice').textContent = text
  $('#notice').hidden = text === ''
}

class Refused extends Error {}

async function api (path, body) {
  const init = { headers: { authorization: `Bearer ${token}` } }
  if (body !== undefined) {
    init.method = 'POST'
    init.headers['content-type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const response = await fetch(new URL(path, location.href), init)
  const answer = await response.json().catch(() => ({}))
  if (response.status === 401 || response.status === 403) {
    throw new Refused(response.status === 403 ? 'Forbidden: this user is not an admin.' : 'Not logged in, or the session expired.')
  }
  if (!response.ok) throw new Error(`${answer.code ?? response.status}: ${answer.message ?? response.statusText}`)
  return answer
}

function cell (row, text, className) {
  const td = row.insertCell()
  td.textContent = String(text)
  if (className !== undefined) td.className = className
  return td
}

function fill (table, rows, render) {
  const body = $(`${table} tbody`)
  body.replaceChildren()
  for (const item of rows) render(body.insertRow(), item)
}

/** A connection's row: made once, with its Disconnect button, and updated in place (a click never misses it). */
function connectionRow (body, c) {
  let row = body.querySelector(`tr[data-connection="${CSS.escape(c.id)}"]`)
  if (row === null) {
    row = body.insertRow()
    row.dataset.connection = c.id
    for (let i = 0; i < 8; i++) row.insertCell()
    const button = document.createElement('button')
    button.type = 'button'
    button.textContent = 'Disconnect'
    button.addEventListener('click', () => {
      api('api/disconnect', { id: c.id, reason: 'disconnected by an admin' }).catch(failed)
    })
    row.insertCell().append(button)
  }
  const values = [c.id, c.profileId ?? 'anonymous', c.channels.join(', '), c.ip, new Date(c.started).toLocaleTimeString(),
    `${c.messagesIn} / ${c.bytesIn} B`, `${c.messagesOut} / ${c.bytesOut} B`, c.buffered]
  values.forEach((value, i) => {
    const td = row.cells[i]
    td.textContent = String(value)
    td.className = i === 0 ? 'id' : i >= 5 ? 'num' : ''
  })
}

function renderConnections () {
  const body = $('#connections tbody')
  for (const row of [...body.rows]) {
    if (!connections.has(row.dataset.connection)) row.remove()
  }
  for (const c of connections.values()) connectionRow(body, c)
}

async function refresh () {
  const [status, channels, list] = await Promise.all([api('api/status'), api('api/channels'), api('api/connections')])
  fill('#nodes', status.cluster.nodes, (row, n) => {
    cell(row, n.node === status.node.node ? `${n.node} (this one)` : n.node, 'id')
    cell(row, n.connections, 'num')
    cell(row, n.channels, 'num')
    cell(row, n.messagesIn, 'num')
    cell(row, n.messagesOut, 'num')
    cell(row, status.cluster.broker ?? status.node.broker)
  })
  fill('#channels', channels.channels, (row, c) => {
    cell(row, c.name)
    cell(row, c.connections, 'num')
    cell(row, c.users, 'num')
    cell(row, c.seq, 'num')
  })
  connections.clear()
  for (const c of list.connections) connections.set(c.id, c)
  renderConnections()
}

function describe (e) {
  switch (e.type) {
    case 'open': return `open ${e.connection} ${e.user ?? 'anonymous'} in ${e.channel} from ${e.ip}`
    case 'close': return `close ${e.connection} (${e.code})`
    case 'join': case 'leave': return `${e.type} ${e.connection} ${e.channel}`
    case 'in': case 'out': return `${e.type} ${e.connection} ${e.channel} ${e.cmd} ${e.size} B${'param' in e ? ` ${JSON.stringify(e.param)}` : ''}`
    case 'broadcast': return `broadcast ${e.channel} ${e.cmd} ${e.size} B to ${e.recipients}${'param' in e ? ` ${JSON.stringify(e.param)}` : ''}`
    case 'dropped': return `the tap could not keep up: ${e.count} events dropped`
    default: return JSON.stringify(e)
  }
}

function logEvent (e) {
  const item = document.createElement('li')
  item.textContent = `${new Date(e.time ?? Date.now()).toLocaleTimeString()} ${describe(e)}`
  if (e.type === 'dropped') item.className = 'dropped'
  const list = $('#events')
  list.prepend(item)
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove()
}

/** What the tap says changes the tables at once; counts follow with the next refresh. */
function onEvent (e) {
  if (e.type === 'hello') return
  logEvent(e)
  if (e.type === 'open') {
    connections.set(e.connection, { id: e.connection, profileId: e.user, channels: [], ip: e.ip, started: new Date(e.time).toISOString(), messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0, buffered: 0 })
    renderConnections()
  } else if (e.type === 'close') {
    connections.delete(e.connection)
    renderConnections()
  } else if (e.type === 'join' || e.type === 'leave') {
    const c = connections.get(e.connection)
    if (c === undefined) return
    c.channels = e.type === 'join' ? [...new Set([...c.channels, e.channel])] : c.channels.filter((name) => name !== e.channel)
    renderConnections()
  }
}

function openTap () {
  const url = new URL('tap', location.href)
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  const socket = new WebSocket(url, ['forge.v1', `bearer.${token}`])
  tap = socket
  socket.addEventListener('open', () => {
    tapRetry = 500
    $('#tap-state').textContent = '· live'
  })
  socket.addEventListener('message', (message) => onEvent(JSON.parse(message.data)))
  socket.addEventListener('close', () => {
    if (tap !== socket) return
    $('#tap-state').textContent = '· reconnecting…'
    tapRetry = Math.min(tapRetry * 2, 10_000)
    setTimeout(() => { if (tap === socket) openTap() }, tapRetry)
  })
}

function failed (err) {
  if (err instanceof Refused) return logout(err.message)
  notice(err.message)
}

async function start () {
  try {
    await refresh()
  } catch (err) {
    return failed(err)
  }
  notice('')
  $('#login').hidden = true
  $('#console').hidden = false
  $('#logout').hidden = false
  openTap()
  refreshTimer = setInterval(() => { refresh().catch(failed) }, 2000)
}

function logout (message = '') {
  sessionStorage.removeItem(TOKEN_KEY)
  token = null
  const socket = tap
  tap = null
  socket?.close()
  clearInterval(refreshTimer)
  $('#console').hidden = true
  $('#logout').hidden = true
  $('#login').hidden = false
  notice(message)
}

async function login (event, config) {
  event.preventDefault()
  const form = new FormData(event.target)
  if (config.login === null) {
    token = String(form.get('token') ?? '').trim()
  } else {
    const response = await fetch(new URL(config.login, location.href), {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: form.get('name') })
    })
    const answer = await response.json().catch(() => ({}))
    if (!response.ok) return notice(`Login failed: ${answer.message ?? response.statusText}`)
    token = answer.token
  }
  sessionStorage.setItem(TOKEN_KEY, token)
  await start()
}

async function send (event) {
  event.preventDefault()
  const form = new FormData(event.target)
  const text = String(form.get('param') ?? '').trim()
  let param = null
  try {
    if (text !== '') param = JSON.parse(text)
  } catch {
    $('#send-result').textContent = 'The param is not JSON.'
    return
  }
  try {
    const { delivered } = await api('api/send', { channel: form.get('channel'), cmd: form.get('cmd'), param })
    $('#send-result').textContent = `Sent: delivered to ${delivered} connection(s) on this node.`
  } catch (err) {
    if (err instanceof Refused) return failed(err)
    $('#send-result').textContent = err.message
  }
}

const config = await fetch(new URL('api/config', location.href)).then((r) => r.json())
$('#login-name').hidden = config.login === null
$('#login-token').hidden = config.login !== null
$('#login').addEventListener('submit', (event) => { login(event, config).catch(failed) })
$('#send').addEventListener('submit', (event) => { send(event) })
$('#logout').addEventListener('click', () => logout())
if (token !== null) await start()
else $('#login').hidden = false
