// The console's one way to the API: every request carries the bearer token kept for this tab
// (sessionStorage: gone when the tab closes; never in a cookie, so no CSRF surface).

const TOKEN_KEY = "sv.token";

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// -- trusted clusters (docs/federation.md) ------------------------------------------------------
// On a root, the console reads either this installation or its leaves: "" (this installation),
// "*" (every leaf) or one leaf's name, kept for the tab like the token.

const SCOPE_KEY = "sv.leaf";

export function leafScope(): string {
  return sessionStorage.getItem(SCOPE_KEY) ?? "";
}

export function setLeafScope(value: string): void {
  if (value) sessionStorage.setItem(SCOPE_KEY, value);
  else sessionStorage.removeItem(SCOPE_KEY);
}

/** The path of a session route: the leaf's own route through the root when `leaf` is set. */
export function sessionPath(sid: string, leaf: string | null | undefined, rest = ""): string {
  const own = `/v1/sessions/${encodeURIComponent(sid)}${rest}`;
  return leaf ? `/v1/federation/leaves/${encodeURIComponent(leaf)}${own}` : own;
}

/** A list route (`sessions`, `search`, `kube/timeline`) in the scope: the root's federated
 *  route, asking one leaf or every leaf, or this installation's own. */
export function scopedList(route: string, params: Params): [string, Params] {
  const scope = leafScope();
  if (!scope) return [`/v1/${route}`, params];
  return [`/v1/federation/${route}`, scope === "*" ? params : { ...params, leaf: scope }];
}

export interface LeafStatus {
  name: string;
  status: string;
  items?: number;
  message?: string;
}

/** What a federated answer says of its leaves: "leaf-a ok (3) · leaf-b DOWN: ..." */
export function leafStatusText(leaves: LeafStatus[] | undefined): string {
  return (leaves ?? [])
    .map((l) => {
      const ok = l.status === "ok" || l.status === "no_access";
      const shown = ok ? l.status.replace("_", " ") : l.status.toUpperCase();
      return `${l.name} ${shown}${l.status === "ok" && l.items !== undefined ? ` (${l.items})` : ""}${!ok && l.message ? `: ${l.message}` : ""}`;
    })
    .join(" · ");
}

export type Params = Record<string, string | number | string[] | undefined | null>;

export function query(params: Params): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const t = token();
  if (t) headers.set("Authorization", `Bearer ${t}`);
  const resp = await fetch(path, { ...init, headers, cache: "no-store" });
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      const body = await resp.json();
      if (typeof body.detail === "string") detail = body.detail;
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(resp.status, detail);
  }
  return resp;
}

export async function get<T>(path: string, params: Params = {}): Promise<T> {
  return (await (await request(path + query(params))).json()) as T;
}

export async function post<T>(path: string, body: unknown): Promise<T> {
  const resp = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return (await resp.json()) as T;
}

export function b64bytes(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export interface Session {
  sid: string;
  leaf?: string;
  kind: string;
  user: string;
  login: string;
  server_id: string;
  cluster_name: string;
  kubernetes_cluster: string;
  command: string;
  started_at: string;
  ended_at: string | null;
  duration_ms: number;
  bytes: number;
  cols: number;
  rows: number;
  status: string;
  integrity: string;
  exit_code: number | null;
}

export type WireFrame = [number, string, string];

export interface SeekAnswer {
  at_ms: number;
  cols: number;
  rows: number;
  keyframe_ms: number | null;
  frames: WireFrame[];
  next: { seq: number; skip: number };
}

export interface WindowAnswer {
  frames: WireFrame[];
  next: { seq: number; skip: number };
  end: boolean;
  status: string;
  duration_ms: number;
}

export interface SearchHit {
  kind: "event" | "output";
  leaf?: string;
  time: string;
  id: string;
  user: string;
  login: string;
  server_id: string;
  cluster_name: string;
  kubernetes_cluster: string;
  sid: string | null;
  offset_ms: number | null;
  event?: string | null;
  code?: string | null;
  fields?: Record<string, unknown> | null;
  start_ms?: number | null;
  end_ms?: number | null;
  text?: string | null;
}

export interface SearchPage {
  hits: SearchHit[];
  next_cursor: string | null;
  backend?: string;
  reason?: string;
  indexed_until?: string | null;
  partial?: boolean;
  leaves?: LeafStatus[];
}
