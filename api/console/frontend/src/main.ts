// The sessionvault web console: one page, hash routes, everything read through the API with
// the tab's token (or a share link's token). Pages: sessions, search, player, kubernetes,
// alerts, login, share.

import {
  ApiError, get, leafScope, leafStatusText, post, query, request, scopedList, sessionPath, setLeafScope, setToken, token,
} from "./api";
import type { LeafStatus, SearchHit, SearchPage, Session } from "./api";
import { clear, fmtBytes, fmtDuration, fmtTime, h } from "./dom";
import { type Marker, Player } from "./player";

const app = document.getElementById("app")!;
let current: Player | null = null;

interface Route {
  path: string[];
  params: URLSearchParams;
}

function route(): Route {
  const raw = location.hash.replace(/^#/, "") || "/sessions";
  const [p, q] = raw.split("?", 2);
  return { path: p.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? "") };
}

function go(path: string, params: Record<string, string> = {}): void {
  location.hash = path + query(params);
}

function nav(active: string): HTMLElement {
  const link = (href: string, label: string) =>
    h("a", { href: `#${href}`, class: active === label ? "active" : "" }, label);
  return h(
    "nav",
    {},
    h("span", { class: "brand" }, "sessionvault"),
    link("/sessions", "Sessions"),
    link("/search", "Search"),
    link("/kube", "Kubernetes"),
    link("/alerts", "Alerts"),
    h("span", { class: "scope", id: "scope" }),
    h("span", { class: "who", id: "who" }),
    h("button", { class: "link", onclick: () => { setToken(null); go("/login"); } }, "Sign out"),
  );
}

/** On a root, a selector of what the list pages read: this installation, every leaf, or one
 *  leaf (docs/federation.md). Elsewhere nothing is shown. */
async function showScope(root: boolean): Promise<void> {
  if (!root) {
    if (leafScope()) setLeafScope(""); // not a root (any more): this installation
    return;
  }
  let leaves: { name: string; connected: boolean }[];
  try {
    leaves = (await get<{ leaves: { name: string; connected: boolean }[] }>("/v1/federation/leaves")).leaves;
  } catch {
    return;
  }
  const el = document.getElementById("scope");
  if (!el) return;
  const scope = leafScope();
  const sel = h("select", { id: "leaf-scope", "aria-label": "cluster" },
    h("option", { value: "", selected: scope === "" }, "this cluster"),
    h("option", { value: "*", selected: scope === "*" }, "all leaf clusters"),
    ...leaves.map((l) => h("option", { value: l.name, selected: scope === l.name }, `leaf ${l.name}${l.connected ? "" : " (down)"}`)),
  ) as HTMLSelectElement;
  sel.addEventListener("change", () => {
    setLeafScope(sel.value);
    void render();
  });
  clear(el).append(sel);
}

/** A line naming each leaf's part of a federated answer; an error box when one is missing. */
function leavesLine(answer: { partial?: boolean; leaves?: LeafStatus[] }): HTMLElement | string {
  if (!answer.leaves) return "";
  return h("p", { class: answer.partial ? "error leaves" : "hint leaves", id: "leaves", role: answer.partial ? "alert" : "status" },
    answer.partial ? "Incomplete: " : "Leaf clusters: ", leafStatusText(answer.leaves));
}

function playHref(sid: string, leaf: string | undefined, params: Record<string, string> = {}): string {
  return `#/play/${encodeURIComponent(sid)}${query(leaf ? { ...params, leaf } : params)}`;
}

async function showWho(): Promise<void> {
  try {
    const me = await get<{ user: string; roles: string[]; tenant: string; clusters: string[]; federation_root: boolean }>(
      "/v1/whoami");
    void showScope(me.federation_root);
    const el = document.getElementById("who");
    const user = me.user ? `${me.user}${me.roles.length ? ` (${me.roles.join(", ")})` : ""} · ` : "";
    if (el) el.textContent = `${user}tenant ${me.tenant}${me.clusters.length ? ` · clusters ${me.clusters.join(", ")}` : ""}`;
  } catch {
    /* shown by the page's own request */
  }
}

function page(active: string, ...body: (Node | string)[]): HTMLElement {
  current?.dispose();
  current = null;
  clear(app).append(nav(active), h("main", {}, ...body));
  void showWho();
  return app;
}

function errorBox(err: unknown): HTMLElement {
  if (err instanceof ApiError && err.status === 401) {
    go("/login", { why: "Your token is missing, expired or revoked." });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return h("p", { class: "error", role: "alert" }, msg);
}

// -- login -----------------------------------------------------------------------------------

function loginPage(r: Route): void {
  current?.dispose();
  current = null;
  const input = h("input", { type: "password", id: "token", placeholder: "svt_…", autocomplete: "off", size: 50 }) as HTMLInputElement;
  const msg = h("p", { class: "error", role: "alert" }, r.params.get("why") ?? "");
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        setToken(input.value.trim());
        try {
          await get("/v1/whoami");
          go("/sessions");
        } catch (err) {
          setToken(null);
          msg.textContent = err instanceof Error ? err.message : String(err);
        }
      },
    },
    h("h1", {}, "sessionvault"),
    h("label", { for: "token" }, "API token (read scope)"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    msg,
    h("p", { class: "hint" }, "Create one with: sessionvault token create --tenant T --scope read"),
  );
  clear(app).append(form);
  input.focus();
}

// -- sessions ----------------------------------------------------------------------------------

const FILTERS = ["user", "login", "server_id", "cluster_name", "kubernetes_cluster"] as const;

function sessionRow(s: Session): HTMLElement {
  const where = s.kind === "kube" ? `${s.kubernetes_cluster}` : s.server_id;
  return h(
    "tr",
    { class: `status-${s.status}` },
    h("td", {}, h("a", { href: playHref(s.sid, s.leaf) }, s.sid.slice(0, 8))),
    ...(leafScope() ? [h("td", { class: "leaf" }, s.leaf ?? "")] : []),
    h("td", {}, s.status === "active" ? h("span", { class: "live-badge" }, "LIVE") : s.status),
    h("td", {}, s.kind === "kube" ? "kubectl" : "ssh"),
    h("td", {}, s.user),
    h("td", {}, s.login),
    h("td", {}, where),
    h("td", {}, s.cluster_name),
    h("td", {}, fmtTime(s.started_at)),
    h("td", { class: "num" }, fmtDuration(s.duration_ms)),
    h("td", { class: "num" }, fmtBytes(s.bytes)),
  );
}

async function sessionsPage(r: Route): Promise<void> {
  const p = r.params;
  const inputs: Record<string, HTMLInputElement | HTMLSelectElement> = {};
  const field = (name: string, label: string) => {
    const el = h("input", { name, value: p.get(name) ?? "", placeholder: label, "aria-label": label }) as HTMLInputElement;
    inputs[name] = el;
    return el;
  };
  const select = (name: string, options: string[]) => {
    const el = h("select", { name, "aria-label": name },
      ...options.map((o) => h("option", { value: o, selected: (p.get(name) ?? "") === o }, o || `any ${name}`)),
    ) as HTMLSelectElement;
    inputs[name] = el;
    return el;
  };
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        const params: Record<string, string> = {};
        for (const [k, el] of Object.entries(inputs)) if (el.value) params[k] = el.value;
        go("/sessions", params);
      },
    },
    field("user", "user"),
    field("login", "login"),
    field("server_id", "server"),
    field("cluster_name", "cluster"),
    field("kubernetes_cluster", "kube cluster"),
    select("kind", ["", "ssh", "kubectl"]),
    select("status", ["", "active", "ended", "abandoned"]),
    field("since", "since (24h, RFC 3339)"),
    field("until", "until"),
    h("button", { type: "submit" }, "Filter"),
  );
  const body = h("tbody");
  const more = h("button", { class: "more", hidden: true }, "More");
  const table = h(
    "table",
    { class: "sessions" },
    h("thead", {}, h("tr", {}, ...["Session", ...(leafScope() ? ["Leaf"] : []), "Status", "Type", "User", "Login", "Server / cluster", "Proxy cluster", "Started", "Length", "Size"].map((c) => h("th", {}, c)))),
    body,
  );
  const status = h("p", { class: "hint" });
  const leavesSlot = h("div");
  page("Sessions", h("h1", {}, "Sessions"), form, leavesSlot, table, more, status);
  let cursor: string | null = null;
  const load = async () => {
    const params: Record<string, string | string[]> = { limit: "50" };
    for (const name of [...FILTERS, "kind", "status", "since", "until"]) {
      const v = p.get(name);
      if (v) params[name] = v;
    }
    if (cursor) params.cursor = cursor;
    try {
      const answer = await get<{ sessions: Session[]; next_cursor: string | null; partial?: boolean; leaves?: LeafStatus[] }>(
        ...scopedList("sessions", params));
      clear(leavesSlot).append(leavesLine(answer));
      answer.sessions.forEach((s) => body.append(sessionRow(s)));
      cursor = answer.next_cursor;
      more.hidden = !cursor;
      status.textContent = body.children.length ? "" : "No sessions match.";
    } catch (err) {
      status.replaceWith(errorBox(err));
    }
  };
  more.addEventListener("click", () => void load());
  await load();
}

// -- search ------------------------------------------------------------------------------------

function hitLink(hit: SearchHit, q: string): HTMLElement | string {
  if (!hit.sid) return "";
  const t = hit.kind === "output" ? (hit.end_ms ?? hit.offset_ms ?? 0) : (hit.offset_ms ?? 0);
  const params: Record<string, string> = { t: String(t) };
  if (hit.kind === "output" && q) params.hl = q;
  return h("a", { href: playHref(hit.sid, hit.leaf, params), class: "open" }, "open at this moment");
}

function hitSummary(hit: SearchHit): HTMLElement {
  if (hit.kind === "output") return h("pre", { class: "context" }, hit.text ?? "");
  const f = hit.fields ?? {};
  const bits = [hit.event, f["verb"], f["request_path"] ?? f["command"] ?? f["title"]]
    .filter((x) => x !== undefined && x !== null && x !== "")
    .map(String);
  return h("div", { class: "context" }, bits.join(" · "));
}

/** Filters the search box understands as `name:value` (the API's parameter it sets). */
const BOX_FILTERS: Record<string, string> = {
  user: "user", login: "login", server: "server_id", cluster: "cluster_name",
  kube: "kubernetes_cluster", namespace: "kubernetes_namespace", resource: "kubernetes_resource",
  verb: "verb", event: "event", code: "code", sid: "sid", since: "since", until: "until", kind: "kind",
};

export interface BoxQuery {
  text: string[];
  filters: Record<string, string[]>;
}

/** The search box: `name:value` filters (repeatable: any of the values), "quoted phrases",
 *  and the other words as one literal phrase, the way `sessionvault search --text` takes it. */
export function parseBox(box: string): BoxQuery {
  const text: string[] = [];
  const filters: Record<string, string[]> = {};
  const words: string[] = [];
  for (const m of box.matchAll(/(\w+):("[^"]*"|\S+)|"([^"]*)"|(\S+)/g)) {
    const [, name, value, quoted, word] = m;
    if (name !== undefined && BOX_FILTERS[name.toLowerCase()]) {
      const key = BOX_FILTERS[name.toLowerCase()];
      (filters[key] ??= []).push(value.replace(/^"|"$/g, ""));
    } else if (quoted !== undefined) {
      if (quoted) text.push(quoted);
    } else {
      words.push(name !== undefined ? m[0] : word);
    }
  }
  if (words.length) text.unshift(words.join(" "));
  return { text, filters };
}

async function searchPage(r: Route): Promise<void> {
  const q = r.params.get("q") ?? "";
  const box = h("input", { name: "q", value: q, placeholder: 'kubectl delete  verb:delete  kube:prod-eu  since:90d  "two words"', size: 80, "aria-label": "search" }) as HTMLInputElement;
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        go("/search", { q: box.value });
      },
    },
    box,
    h("button", { type: "submit" }, "Search"),
  );
  const help = h("p", { class: "hint" },
    "Words are one literal, case-insensitive phrase; \"quoted\" phrases must all occur too. Filters: ",
    Object.keys(BOX_FILTERS).map((k) => `${k}:`).join(" "), " (kind:events or kind:output).");
  const results = h("ol", { class: "hits" });
  const status = h("p", { class: "hint" });
  page("Search", h("h1", {}, "Search"), form, help, status, results);
  box.focus();
  const parsed = parseBox(q);
  if (!parsed.text.length && !Object.keys(parsed.filters).length) return;
  try {
    const params: Record<string, string | string[]> = { limit: "100", ...parsed.filters };
    if (parsed.text.length) params.text = parsed.text;
    if (Array.isArray(params.kind)) params.kind = params.kind[0];
    const answer = await get<SearchPage>(...scopedList("search", params));
    status.textContent = answer.backend
      ? `${answer.hits.length} hits · answered by ${answer.backend}` +
        (answer.indexed_until ? ` (OpenSearch holds data up to ${fmtTime(answer.indexed_until)}; later data from PostgreSQL)` : "")
      : `${answer.hits.length} hits`;
    status.after(leavesLine(answer));
    for (const hit of answer.hits) {
      results.append(
        h("li", { class: `hit hit-${hit.kind}` },
          h("div", { class: "meta" },
            fmtTime(hit.time), hit.leaf ? ` · leaf ${hit.leaf}` : "", " · ", hit.user || "-", " · ", hit.kubernetes_cluster || hit.server_id || hit.cluster_name || "-",
            hit.sid ? ` · session ${hit.sid.slice(0, 8)}` : ""),
          hitSummary(hit),
          hitLink(hit, parsed.text[0] ?? ""),
        ),
      );
    }
    if (!answer.hits.length) status.textContent = answer.backend ? `No hits (answered by ${answer.backend}).` : "No hits.";
  } catch (err) {
    status.replaceWith(errorBox(err));
  }
}

// -- player ------------------------------------------------------------------------------------

async function sessionMarkers(sid: string, leaf: string): Promise<Marker[]> {
  try {
    const answer = await get<{ markers: Marker[] }>(sessionPath(sid, leaf, "/markers"));
    return answer.markers;
  } catch {
    return []; // the player works without its marks
  }
}

async function download(sid: string, format: string, leaf: string): Promise<void> {
  // The evidence bundle is signed on the server (docs/evidence.md); the rest are exports.
  const path = format === "bundle" ? "/bundle" : `/export?format=${format}`;
  const resp = await request(sessionPath(sid, leaf, path));
  const blob = await resp.blob();
  const ext = { "asciicast-v2": "cast", raw: "raw", text: "txt", ndjson: "ndjson", bundle: "evidence.zip" }[format] ?? "bin";
  const a = h("a", { href: URL.createObjectURL(blob), download: `${sid}.${ext}` }) as HTMLAnchorElement;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function keyLabel(data: Uint8Array): string {
  let s = "";
  for (const b of data) {
    if (b === 13) s += "⏎";
    else if (b === 27) s += "⎋";
    else if (b === 127) s += "⌫";
    else if (b < 32) s += `^${String.fromCharCode(b + 64)}`;
    else s += String.fromCharCode(b);
  }
  return s;
}

async function playerPage(r: Route, shared = false): Promise<void> {
  const sid = r.path[1];
  const leaf = shared ? "" : (r.params.get("leaf") ?? "");
  let session: Session;
  try {
    session = await get<Session>(sessionPath(sid, leaf));
  } catch (err) {
    if (shared) throw err; // the share page says the link cannot be opened
    page("Sessions", errorBox(err));
    return;
  }
  const host = h("div", { class: "terminal", id: "terminal" });
  const fill = h("div", { class: "fill" });
  const markersEl = h("div", { class: "markers" });
  const bar = h("div", { class: "timeline", id: "timeline", role: "slider", "aria-label": "timeline", tabindex: 0 }, fill, markersEl);
  const playBtn = h("button", { id: "play" }, "▶");
  const time = h("span", { class: "time", id: "time" });
  const speedEl = h("span", { class: "speed", id: "speed" });
  const idle = h("select", { id: "idle", "aria-label": "idle time cap" },
    ...[["1000", "idle cap 1s"], ["2000", "idle cap 2s"], ["5000", "idle cap 5s"], ["1000000000", "no idle cap"]]
      .map(([v, l]) => h("option", { value: v, selected: v === "2000" }, l))) as HTMLSelectElement;
  const keysBox = h("input", { type: "checkbox", id: "keys" }) as HTMLInputElement;
  const keysTrack = h("div", { class: "keys", id: "keystrokes", hidden: true });
  const info = h("div", { class: "info" },
    leaf ? h("span", { class: "leaf-badge", id: "leaf" }, `leaf ${leaf}`) : "",
    h("strong", {}, session.user || "?"), ` as ${session.login || "?"} on `,
    h("strong", {}, session.kind === "kube" ? session.kubernetes_cluster : session.server_id),
    ` · ${fmtTime(session.started_at)} · ${fmtDuration(session.duration_ms)} · ${session.status}`,
    session.command ? ` · ${session.command}` : "",
  );
  const bundleOut = h("span", { class: "share-out", id: "bundle-error" });
  const exports = h("span", { class: "exports" }, "Export: ",
    ...["asciicast-v2", "raw", "text", "ndjson"].map((f) =>
      h("button", { class: "link", onclick: () => void download(sid, f, leaf) }, f === "ndjson" ? "json" : f)),
    h("button", {
      class: "link", id: "bundle", title: "signed evidence bundle (verify offline with sessionvault verify-bundle)",
      onclick: () => {
        bundleOut.textContent = "";
        download(sid, "bundle", leaf).catch((err: unknown) => {
          bundleOut.textContent = err instanceof Error ? err.message : String(err);
        });
      },
    }, "evidence bundle"), bundleOut);
  const shareOut = h("span", { class: "share-out", id: "share-url" });
  // A share link is a token of this installation: a leaf's session is shared on the leaf.
  const shareBtn = shared || leaf ? "" : h("button", { id: "share", onclick: async () => {
    try {
      const link = await post<{ url: string; expires_at: string }>("/v1/shares", { sid, at_ms: Math.round(player.pos), ttl_s: 86400 });
      const url = new URL(link.url, location.href).href;
      shareOut.textContent = `${url} (read-only, until ${fmtTime(link.expires_at)})`;
      void navigator.clipboard?.writeText(url).catch(() => undefined);
    } catch (err) {
      shareOut.textContent = err instanceof Error ? err.message : String(err);
    }
  } }, "Share link");
  const copyBtn = h("button", { onclick: () => void navigator.clipboard?.writeText(player.screenText()) }, "Copy screen text");
  const liveBtn = h("button", { id: "live", hidden: session.status !== "active", onclick: () => void player.followLive() }, "● Watch live");
  const controls = h("div", { class: "controls" }, playBtn, time, speedEl, idle, liveBtn,
    h("label", {}, keysBox, " keystrokes"), copyBtn, shareBtn, exports);
  const help = h("p", { class: "hint" }, "space play/pause · . step · < > speed · ← → 5 s · f full screen · click the timeline to seek");
  if (shared) {
    clear(app).append(h("nav", {}, h("span", { class: "brand" }, "sessionvault"), h("span", { class: "who" }, "shared read-only link")),
      h("main", {}, info, host, bar, controls, keysTrack, shareOut, help));
  } else {
    page("Sessions", info, host, bar, controls, keysTrack, shareOut, help);
  }
  const player = new Player(host, session, leaf);
  current = player;
  (window as unknown as { svPlayer: Player }).svPlayer = player;
  let markers: Marker[] = [];
  const drawMarkers = () => {
    clear(markersEl);
    const d = Math.max(1, player.duration);
    for (const m of markers) {
      markersEl.append(h("span", { class: `marker marker-${m.kind}`, title: `${fmtDuration(m.t)} ${m.label}`, style: `left:${(100 * m.t) / d}%` }));
    }
  };
  player.onChange = () => {
    const d = Math.max(1, player.duration);
    fill.style.width = `${Math.min(100, (100 * player.pos) / d)}%`;
    time.textContent = `${fmtDuration(player.pos)} / ${fmtDuration(player.duration)}${player.live ? " · live" : ""}`;
    speedEl.textContent = `${player.speed}×`;
    playBtn.textContent = player.playing ? "❚❚" : "▶";
    playBtn.setAttribute("aria-label", player.playing ? "pause" : "play");
  };
  player.onInput = (f) => {
    if (!keysBox.checked) return;
    keysTrack.append(h("span", { class: "key", title: fmtDuration(f.t) }, keyLabel(f.data)));
    while (keysTrack.childElementCount > 200) keysTrack.firstElementChild?.remove();
  };
  keysBox.addEventListener("change", () => { keysTrack.hidden = !keysBox.checked; });
  idle.addEventListener("change", () => { player.idleCapMs = Number(idle.value); });
  playBtn.addEventListener("click", () => player.toggle());
  bar.addEventListener("click", (ev) => {
    const rect = bar.getBoundingClientRect();
    void player.seek(((ev.clientX - rect.left) / rect.width) * player.duration);
  });
  const onKey = (ev: KeyboardEvent) => {
    if (current !== player || (ev.target instanceof HTMLInputElement && ev.target.type !== "checkbox")) return;
    const k = ev.key;
    if (k === " ") player.toggle();
    else if (k === ".") void player.step();
    else if (k === ">") player.faster();
    else if (k === "<") player.slower();
    else if (k === "ArrowRight") void player.seek(player.pos + 5000);
    else if (k === "ArrowLeft") void player.seek(player.pos - 5000);
    else if (k === "f") {
      if (document.fullscreenElement) void document.exitFullscreen();
      else void host.requestFullscreen?.().catch(() => undefined);
    } else return;
    ev.preventDefault();
  };
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => document.removeEventListener("keydown", onKey), { once: true });
  const t = Number(r.params.get("t") ?? "0");
  const hl = r.params.get("hl") ?? "";
  await player.seek(t);
  if (hl) {
    const found = player.highlight(hl);
    host.dataset.highlight = found ? "found" : "missing";
  }
  host.dataset.ready = "1";
  // From navigation to the first screen drawn (bench/console.py reads it).
  (window as unknown as { svFirstScreenMs: number }).svFirstScreenMs = performance.now();
  if (r.params.get("live") === "1" && session.status === "active") void player.followLive();
  markers = await sessionMarkers(sid, leaf);
  if (hl) markers.push({ t, kind: "hit", label: `match: ${hl}` });
  drawMarkers();
}

// -- kubernetes ----------------------------------------------------------------------------------

interface KubeEntry {
  kind: string;
  leaf?: string;
  time: string;
  user: string;
  cluster: string;
  verb?: string;
  resource?: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  response_code?: number | null;
  sid?: string;
  duration_ms?: number;
  command?: string;
}

async function kubePage(r: Route): Promise<void> {
  const since = r.params.get("since") ?? "7d";
  const inputs: Record<string, HTMLInputElement> = {};
  const field = (name: string, label: string, value: string) => {
    const el = h("input", { name, value, placeholder: label, "aria-label": label }) as HTMLInputElement;
    inputs[name] = el;
    return el;
  };
  const form = h("form", {
    class: "filters",
    onsubmit: (ev: Event) => {
      ev.preventDefault();
      const params: Record<string, string> = {};
      for (const [k, el] of Object.entries(inputs)) if (el.value) params[k] = el.value;
      go("/kube", params);
    },
  }, field("user", "user", r.params.get("user") ?? ""), field("cluster", "cluster", r.params.get("cluster") ?? ""),
  field("since", "since", since), h("button", { type: "submit" }, "Show"));
  const body = h("tbody");
  const status = h("p", { class: "hint" });
  page("Kubernetes", h("h1", {}, "Kubernetes activity"), form, status,
    h("table", { class: "kube" }, h("thead", {}, h("tr", {}, ...["Time", "User", "Cluster", "Request / session", "Namespace", "Status"].map((c) => h("th", {}, c)))), body));
  try {
    const answer = await get<{ entries: KubeEntry[]; truncated: boolean; partial?: boolean; leaves?: LeafStatus[] }>(
      ...scopedList("kube/timeline", { since, user: r.params.get("user"), cluster: r.params.get("cluster"), limit: 2000 }));
    status.after(leavesLine(answer));
    for (const e of answer.entries) {
      const what = e.kind === "request"
        ? `${e.verb ?? ""} ${e.resource ?? ""}${e.subresource ? "/" + e.subresource : ""}${e.name ? " " + e.name : ""}`
        : h("a", { href: playHref(e.sid ?? "", e.leaf), class: "exec" }, `exec session ${(e.sid ?? "").slice(0, 8)} ${e.command ?? ""} (${fmtDuration(e.duration_ms ?? 0)})`);
      body.append(h("tr", { class: `kube-${e.kind}` }, h("td", {}, fmtTime(e.time)), h("td", {}, e.leaf ? `${e.user} @ ${e.leaf}` : e.user), h("td", {}, e.cluster), h("td", {}, what),
        h("td", {}, e.namespace ?? ""), h("td", {}, e.response_code === undefined || e.response_code === null ? "" : String(e.response_code))));
    }
    status.textContent = `${answer.entries.length} entries${answer.truncated ? " (truncated: narrow the window)" : ""}`;
  } catch (err) {
    status.replaceWith(errorBox(err));
  }
}

// -- alerts --------------------------------------------------------------------------------------

const LEVELS = ["critical", "high", "medium", "low", "informational"];

async function alertsPage(r: Route): Promise<void> {
  const since = r.params.get("since") ?? "30d";
  const list = h("table", { class: "alerts" });
  const status = h("p", { class: "hint" });
  page("Alerts", h("h1", {}, "Alerts"), status, list);
  try {
    const answer = await get<SearchPage>(...scopedList("search", { event: "alert.sigma", kind: "events", since, limit: "500" }));
    status.after(leavesLine(answer));
    const hits = [...answer.hits].sort((a, b) => {
      const la = LEVELS.indexOf(String(a.fields?.["level"] ?? "low"));
      const lb = LEVELS.indexOf(String(b.fields?.["level"] ?? "low"));
      return la - lb || b.time.localeCompare(a.time);
    });
    list.append(h("thead", {}, h("tr", {}, ...["Severity", "Rule", "Time", "User", "Where", ""].map((c) => h("th", {}, c)))));
    for (const hit of hits) {
      const f = hit.fields ?? {};
      const level = String(f["level"] ?? "");
      list.append(h("tr", { class: `alert level-${level}` }, h("td", {}, level), h("td", {}, String(f["title"] ?? f["rule_id"] ?? "")),
        h("td", {}, fmtTime(hit.time)), h("td", {}, hit.user), h("td", {}, hit.kubernetes_cluster || hit.server_id), h("td", {}, hitLink(hit, ""))));
    }
    status.textContent = `${hits.length} alerts since ${since}`;
  } catch (err) {
    status.replaceWith(errorBox(err));
  }
}

// -- share links ---------------------------------------------------------------------------------

async function sharePage(r: Route): Promise<void> {
  setToken(r.path[1]);
  try {
    const link = await get<{ sid: string; at_ms: number }>("/v1/shares/self");
    await playerPage({ path: ["play", link.sid], params: new URLSearchParams({ t: String(link.at_ms) }) }, true);
  } catch (err) {
    setToken(null);
    clear(app).append(h("main", {}, h("h1", {}, "This link cannot be opened"), h("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err))));
  }
}

// -- routing -------------------------------------------------------------------------------------

async function render(): Promise<void> {
  const r = route();
  const top = r.path[0] ?? "sessions";
  if (top === "share") return sharePage(r);
  if (top === "login" || !token()) return loginPage(r);
  if (top === "search") return searchPage(r);
  if (top === "play" && r.path[1]) return playerPage(r);
  if (top === "kube") return kubePage(r);
  if (top === "alerts") return alertsPage(r);
  return sessionsPage(r);
}

window.addEventListener("hashchange", () => void render());
void render();
