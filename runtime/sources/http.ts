/**
 * An OS image on an HTTP(S) server, read with Range requests over keep-alive connections, several
 * ranges in flight. The image's validator (ETag, else Last-Modified) is pinned at open and every
 * response is checked against it, so a file replaced on the server mid-deployment is reported as
 * BlockError "changed" instead of silently mixing two images.
 */
import http from "node:http";
import https from "node:https";
import { BlockError, type BlockSource, checkRange, SECTOR_SIZE } from "../block/types.ts";
import { trackIo } from "../vmx/clock.ts";
import {
  backoffDelay,
  errorMessage,
  type ResolvedSourceOptions,
  resolveOptions,
  Sleeper,
  type SourceOptions,
  sectorSpan,
} from "./options.ts";

export interface HttpOptions extends SourceOptions {
  /** Extra request headers (e.g. Authorization). */
  headers?: Record<string, string>;
  /** TLS settings for https:// (a private CA, or turning verification off for tests). */
  tls?: { ca?: string | Buffer | Array<string | Buffer>; rejectUnauthorized?: boolean };
}

/** What identifies the image version that was opened. */
export interface HttpValidator {
  etag?: string;
  lastModified?: string;
}

export interface HttpStats {
  /** GET requests sent (including retries). */
  requests: number;
  retries: number;
  bytes: number;
}

const MAX_REDIRECTS = 5;

type Headers = http.IncomingHttpHeaders;

function header(headers: Headers, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function isWeak(etag: string): boolean {
  return etag.startsWith("W/");
}

/** Weak comparison (RFC 9110 8.8.3.2): equal opaque tags, W/ prefixes ignored. */
function sameEtag(a: string, b: string): boolean {
  return a.replace(/^W\//, "") === b.replace(/^W\//, "");
}

/** Errors worth another try: network trouble, timeouts, cut bodies, 5xx / 408 / 429. */
class Transient extends Error {
  constructor(
    message: string,
    readonly code: "io" | "timeout" | "short-read",
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

interface Response {
  status: number;
  headers: Headers;
  res: http.IncomingMessage;
}

export class HttpSource implements BlockSource {
  readonly description: string;
  readonly url: string;
  readonly sectors: number;
  readonly size: number;
  readonly validator: HttpValidator;
  readonly stats: HttpStats = { requests: 0, retries: 0, bytes: 0 };

  readonly #target: URL;
  readonly #agent: http.Agent;
  readonly #opts: ResolvedSourceOptions;
  readonly #headers: Record<string, string>;
  readonly #conditional: Record<string, string>;
  readonly #sleeper = new Sleeper();
  readonly #requests = new Set<http.ClientRequest>();
  #active = 0;
  #waiting: Array<() => void> = [];
  #closed = false;
  #fatal: BlockError | null = null;

  private constructor(
    url: string,
    target: URL,
    agent: http.Agent,
    opts: ResolvedSourceOptions,
    headers: Record<string, string>,
    size: number,
    validator: HttpValidator,
  ) {
    this.url = url;
    this.description = url;
    this.#target = target;
    this.#agent = agent;
    this.#opts = opts;
    this.#headers = headers;
    this.size = size;
    this.sectors = size / SECTOR_SIZE;
    this.validator = validator;
    const conditional: Record<string, string> = {};
    if (validator.etag !== undefined && !isWeak(validator.etag)) {
      conditional["if-match"] = validator.etag;
      conditional["if-range"] = validator.etag;
    } else if (validator.lastModified !== undefined) {
      conditional["if-unmodified-since"] = validator.lastModified;
      conditional["if-range"] = validator.lastModified;
    }
    this.#conditional = conditional;
  }

  /** Finds the size and validator (HEAD, or a `bytes=0-0` probe when HEAD is refused). */
  static async open(url: string, options: HttpOptions = {}): Promise<HttpSource> {
    let target: URL;
    try {
      target = new URL(url);
    } catch (error) {
      throw new BlockError(`invalid HTTP URL "${url}"`, "config", { cause: error });
    }
    if (target.protocol !== "http:" && target.protocol !== "https:") {
      throw new BlockError(`${url}: not an http:// or https:// URL`, "config");
    }
    const opts = resolveOptions(options, { maxInFlight: 4, maxRequestBytes: 4 * 1024 * 1024 });
    const agentOptions = { keepAlive: true, maxSockets: opts.maxInFlight, scheduling: "lifo" as const };
    const agent =
      target.protocol === "https:"
        ? new https.Agent({ ...agentOptions, ...options.tls })
        : new http.Agent(agentOptions);
    const headers = { "user-agent": "medic", ...options.headers };
    try {
      const { target: final, size, validator } = await probe(url, target, agent, opts, headers);
      return new HttpSource(url, final, agent, opts, headers, size, validator);
    } catch (error) {
      agent.destroy();
      throw error;
    }
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
    if (this.#fatal !== null) throw this.#fatal;
    checkRange(this.description, this.sectors, lba, count);
    const buffer = new Uint8Array(count * SECTOR_SIZE);
    if (count === 0) return buffer;
    const start = lba * SECTOR_SIZE;
    const step = this.#opts.maxRequestBytes;
    const parts: Promise<void>[] = [];
    for (let off = 0; off < buffer.length; off += step) {
      const len = Math.min(step, buffer.length - off);
      parts.push(this.#limited(() => this.#fetch(start + off, buffer.subarray(off, off + len))));
    }
    const all = Promise.all(parts).then(
      () => {},
      (error: unknown) => {
        if (error instanceof BlockError && error.code === "changed") this.#fatal = error;
        throw error;
      },
    );
    await trackIo(this.#opts.clock, all);
    return buffer;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sleeper.cancelAll();
    for (const req of this.#requests) {
      req.destroy(new BlockError(`${this.description}: source is closed`, "closed"));
    }
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const wake of waiting) wake();
    this.#agent.destroy();
  }

  async #limited(task: () => Promise<void>): Promise<void> {
    while (this.#active >= this.#opts.maxInFlight) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
      if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
    }
    this.#active++;
    try {
      await task();
    } finally {
      this.#active--;
      this.#waiting.shift()?.();
    }
  }

  /** One range with retries. */
  async #fetch(offset: number, dest: Uint8Array): Promise<void> {
    const span = sectorSpan(offset / SECTOR_SIZE, dest.length / SECTOR_SIZE);
    for (let attempt = 0; ; attempt++) {
      if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
      if (this.#fatal !== null) throw this.#fatal;
      try {
        await this.#getRange(offset, dest);
        return;
      } catch (error) {
        if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
        if (!(error instanceof Transient)) throw error;
        if (attempt >= this.#opts.retries) {
          throw new BlockError(
            `${this.description}: reading ${span} failed after ${attempt + 1} attempts: ${error.message}`,
            error.code,
            { cause: error },
          );
        }
        const delayMs = backoffDelay(attempt + 1, this.#opts.retryDelayMs, this.#opts.maxRetryDelayMs);
        this.stats.retries++;
        this.#opts.onEvent({
          kind: "retry",
          source: this.description,
          lba: offset / SECTOR_SIZE,
          count: dest.length / SECTOR_SIZE,
          attempt: attempt + 1,
          delayMs,
          error,
        });
        await this.#sleeper.sleep(delayMs);
      }
    }
  }

  #changed(detail: string): BlockError {
    return new BlockError(
      `${this.description}: image changed on the server since the deployment started (${detail}); ` +
        "refusing to mix data from two versions of the image",
      "changed",
    );
  }

  /** A response's validators must be those pinned at open. */
  #checkValidators(headers: Headers): void {
    const pinned = this.validator;
    const etag = header(headers, "etag");
    if (pinned.etag !== undefined && etag !== undefined && !sameEtag(pinned.etag, etag)) {
      throw this.#changed(`ETag was ${pinned.etag}, now ${etag}`);
    }
    const lastModified = header(headers, "last-modified");
    if (
      pinned.etag === undefined &&
      pinned.lastModified !== undefined &&
      lastModified !== undefined &&
      lastModified !== pinned.lastModified
    ) {
      throw this.#changed(`Last-Modified was ${pinned.lastModified}, now ${lastModified}`);
    }
  }

  async #getRange(offset: number, dest: Uint8Array): Promise<void> {
    const last = offset + dest.length - 1;
    this.stats.requests++;
    const { status, headers, res } = await this.#request(this.#target, "GET", {
      ...this.#headers,
      ...this.#conditional,
      range: `bytes=${offset}-${last}`,
    });
    if (status === 206) {
      try {
        this.#checkValidators(headers);
        const contentRange = header(headers, "content-range");
        const m =
          contentRange === undefined ? null : /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange.trim());
        if (m === null) {
          const type = header(headers, "content-type") ?? "";
          throw new BlockError(
            `${this.description}: 206 response without a usable Content-Range (${contentRange ?? "none"}, ` +
              `content-type ${type})`,
            "protocol",
          );
        }
        if (m[3] !== "*" && Number(m[3]) !== this.size) {
          throw this.#changed(`size was ${this.size} bytes, now ${m[3]}`);
        }
        if (Number(m[1]) !== offset || Number(m[2]) !== last) {
          throw new BlockError(
            `${this.description}: asked for bytes ${offset}-${last}, the server sent ${m[1]}-${m[2]}`,
            "protocol",
          );
        }
        const encoding = header(headers, "content-encoding");
        if (encoding !== undefined && encoding !== "identity") {
          throw new BlockError(
            `${this.description}: range sent with Content-Encoding ${encoding}`,
            "protocol",
          );
        }
        const length = header(headers, "content-length");
        if (length !== undefined && Number(length) !== dest.length) {
          throw new BlockError(
            `${this.description}: Content-Length ${length} for a ${dest.length}-byte range`,
            "protocol",
          );
        }
      } catch (error) {
        res.destroy();
        throw error;
      }
      await this.#body(res, dest, offset);
      return;
    }
    res.resume(); // discard the body (or let destroy below cut it) so the connection is reusable
    if (status === 200) {
      res.destroy(); // never download a whole image by accident
      this.#checkValidators(headers);
      const length = header(headers, "content-length");
      if (length !== undefined && Number(length) !== this.size) {
        throw this.#changed(`size was ${this.size} bytes, now ${length}`);
      }
      throw new BlockError(
        `${this.description}: the server ignored the Range request (200 OK with the whole file); ` +
          "it must support byte ranges (206 Partial Content)",
        "protocol",
      );
    }
    if (status === 412) throw this.#changed("the server answered 412 Precondition Failed to If-Match");
    if (status === 416) throw this.#changed(`bytes ${offset}-${last} are no longer inside the file (416)`);
    const text = `HTTP ${status} ${res.statusMessage ?? ""}`.trim();
    if (status >= 500 || status === 408 || status === 429)
      throw new Transient(`server answered ${text}`, "io");
    throw new BlockError(`${this.description}: server answered ${text} to a range request`, "io");
  }

  #body(res: http.IncomingMessage, dest: Uint8Array, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let pos = 0;
      let failed = false;
      const fail = (error: Error) => {
        if (failed) return;
        failed = true;
        res.destroy();
        reject(error);
      };
      res.on("data", (chunk: Buffer) => {
        if (failed) return;
        if (pos + chunk.length > dest.length) {
          fail(
            new BlockError(
              `${this.description}: the server sent more than the ${dest.length} bytes asked for at byte ${offset}`,
              "protocol",
            ),
          );
          return;
        }
        dest.set(chunk, pos);
        pos += chunk.length;
        this.stats.bytes += chunk.length;
      });
      res.on("end", () => {
        if (pos < dest.length) {
          fail(
            new Transient(
              `short body: ${pos} of ${dest.length} bytes at byte ${offset} (connection closed early?)`,
              "short-read",
            ),
          );
        } else if (!failed) {
          failed = true;
          resolve();
        }
      });
      res.on("error", (error) => {
        fail(
          error instanceof BlockError
            ? error
            : new Transient(
                `body cut after ${pos} of ${dest.length} bytes at byte ${offset}: ${errorMessage(error)}`,
                "short-read",
                { cause: error },
              ),
        );
      });
      res.on("close", () => {
        if (!failed && pos < dest.length) {
          fail(
            new Transient(`body cut after ${pos} of ${dest.length} bytes at byte ${offset}`, "short-read"),
          );
        }
      });
    });
  }

  #request(target: URL, method: string, headers: Record<string, string>): Promise<Response> {
    return sendRequest(target, method, headers, this.#agent, this.#opts, this.#requests, this.description);
  }
}

function sendRequest(
  target: URL,
  method: string,
  headers: Record<string, string>,
  agent: http.Agent,
  opts: ResolvedSourceOptions,
  live: Set<http.ClientRequest> | null,
  description: string,
): Promise<Response> {
  return new Promise((resolve, reject) => {
    const lib = target.protocol === "https:" ? https : http;
    const req = lib.request(target, { method, headers, agent });
    live?.add(req);
    req.setTimeout(opts.timeoutMs, () => {
      req.destroy(new Transient(`no data for ${opts.timeoutMs} ms`, "timeout"));
    });
    req.on("response", (res) => {
      res.on("close", () => live?.delete(req));
      resolve({ status: res.statusCode ?? 0, headers: res.headers, res });
    });
    req.on("error", (error) => {
      live?.delete(req);
      if (error instanceof BlockError || error instanceof Transient) reject(error);
      else if (
        (error as NodeJS.ErrnoException).code?.startsWith("ERR_TLS") ||
        /certificate/i.test(error.message)
      ) {
        reject(
          new BlockError(`${description}: TLS error: ${errorMessage(error)}`, "config", { cause: error }),
        );
      } else reject(new Transient(errorMessage(error), "io", { cause: error }));
    });
    req.end();
  });
}

/** Retries transient failures of `fn` (used at open, where there is no source yet). */
async function withRetries<T>(
  description: string,
  opts: ResolvedSourceOptions,
  what: string,
  fn: () => Promise<T>,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (error) {
      if (!(error instanceof Transient)) throw error;
      if (attempt >= opts.retries) {
        throw new BlockError(
          `${description}: ${what} failed after ${attempt + 1} attempts: ${error.message}`,
          error.code,
          {
            cause: error,
          },
        );
      }
      const delayMs = backoffDelay(attempt + 1, opts.retryDelayMs, opts.maxRetryDelayMs);
      opts.onEvent({
        kind: "retry",
        source: description,
        lba: 0,
        count: 0,
        attempt: attempt + 1,
        delayMs,
        error,
      });
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

async function probe(
  url: string,
  start: URL,
  agent: http.Agent,
  opts: ResolvedSourceOptions,
  headers: Record<string, string>,
): Promise<{ target: URL; size: number; validator: HttpValidator }> {
  let target = start;
  // HEAD first (following redirects); the URL that answers is the one ranges are read from.
  for (let hop = 0; ; hop++) {
    const {
      status,
      headers: h,
      res,
    } = await withRetries(url, opts, "HEAD", async () => {
      const r = await sendRequest(target, "HEAD", headers, agent, opts, null, url);
      if (r.status >= 500 || r.status === 408 || r.status === 429) {
        r.res.resume();
        throw new Transient(`HEAD answered HTTP ${r.status}`, "io");
      }
      return r;
    });
    res.resume();
    if (status >= 300 && status < 400 && header(h, "location") !== undefined) {
      if (hop >= MAX_REDIRECTS)
        throw new BlockError(`${url}: more than ${MAX_REDIRECTS} redirects`, "config");
      target = new URL(header(h, "location")!, target);
      continue;
    }
    if (status === 404 || status === 410)
      throw new BlockError(`${url}: not found on the server (HTTP ${status})`, "config");
    if (status === 401 || status === 403)
      throw new BlockError(`${url}: access denied (HTTP ${status})`, "config");
    if (status === 200 && header(h, "content-length") !== undefined) {
      if (header(h, "accept-ranges") === "none") {
        throw new BlockError(
          `${url}: the server does not support byte ranges (Accept-Ranges: none)`,
          "protocol",
        );
      }
      return { target, size: checkSize(url, Number(header(h, "content-length"))), validator: validatorOf(h) };
    }
    break; // HEAD refused (405, 501, ...) or no length: ask for the first byte instead
  }
  const {
    status,
    headers: h,
    res,
  } = await withRetries(url, opts, "range probe", async () => {
    const r = await sendRequest(target, "GET", { ...headers, range: "bytes=0-0" }, agent, opts, null, url);
    if (r.status >= 500 || r.status === 408 || r.status === 429) {
      r.res.resume();
      throw new Transient(`range probe answered HTTP ${r.status}`, "io");
    }
    return r;
  });
  res.destroy();
  if (status === 206) {
    const m = /^bytes 0-0\/(\d+)$/.exec((header(h, "content-range") ?? "").trim());
    if (m === null) {
      throw new BlockError(
        `${url}: range probe gave Content-Range "${header(h, "content-range")}"`,
        "protocol",
      );
    }
    return { target, size: checkSize(url, Number(m[1])), validator: validatorOf(h) };
  }
  if (status === 200) {
    throw new BlockError(
      `${url}: the server ignored the Range request (200 OK); byte ranges are required`,
      "protocol",
    );
  }
  if (status === 404 || status === 410)
    throw new BlockError(`${url}: not found on the server (HTTP ${status})`, "config");
  throw new BlockError(
    `${url}: cannot determine the image size (HTTP ${status} to HEAD and to a range GET)`,
    "io",
  );
}

function validatorOf(h: Headers): HttpValidator {
  const validator: HttpValidator = {};
  const etag = header(h, "etag");
  const lastModified = header(h, "last-modified");
  if (etag !== undefined) validator.etag = etag;
  if (lastModified !== undefined) validator.lastModified = lastModified;
  return validator;
}

function checkSize(url: string, size: number): number {
  if (!Number.isSafeInteger(size) || size < 0)
    throw new BlockError(`${url}: bad image size ${size}`, "protocol");
  if (size % SECTOR_SIZE !== 0) {
    throw new BlockError(
      `${url}: image size ${size} bytes is not a multiple of ${SECTOR_SIZE} ` +
        `(${size % SECTOR_SIZE} bytes past the last whole sector); is it a raw disk image?`,
      "config",
    );
  }
  return size;
}

/** Opens an image by http:// or https:// URL. */
export function openHttp(url: string, options: HttpOptions = {}): Promise<HttpSource> {
  return HttpSource.open(url, options);
}
