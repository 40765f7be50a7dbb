/**
 * A deliberately minimal NBD server for the cases real servers cannot be made to produce
 * (protocol violations, odd negotiation replies). Everything else is tested against nbdkit /
 * qemu-nbd. It speaks fixed newstyle, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO / NBD_OPT_INFO.
 */
import net from "node:net";

export interface FakeRead {
  cookie: Buffer;
  offset: number;
  length: number;
}

export interface FakeNbdOptions {
  size: number;
  /** Accept NBD_OPT_STRUCTURED_REPLY. */
  structured: boolean;
  /** Answers NBD_OPT_GO with this error type (e.g. 2^31+5 TLS required) instead of the export. */
  goError?: number;
  /** Answer NBD_OPT_INFO / NBD_OPT_GO with NBD_REP_ERR_UNSUP (an old server: NBD_OPT_EXPORT_NAME only). */
  noGo?: boolean;
  /** Send the oldstyle greeting instead of newstyle. */
  oldstyle?: boolean;
  /** Called for every NBD_CMD_READ; write the reply (or misbehave) with `socket`. */
  onRead(read: FakeRead, socket: net.Socket): void;
}

export const NBD_REPLY_FLAG_DONE = 1;

/** One structured reply chunk. */
export function chunk(cookie: Buffer, flags: number, type: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(0x668e33ef, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  cookie.copy(header, 8);
  header.writeUInt32BE(payload.length, 16);
  return Buffer.concat([header, payload]);
}

export function dataChunk(cookie: Buffer, flags: number, offset: number, data: Buffer): Buffer {
  const payload = Buffer.alloc(8 + data.length);
  payload.writeBigUInt64BE(BigInt(offset), 0);
  data.copy(payload, 8);
  return chunk(cookie, flags, 1, payload);
}

export function simpleReply(cookie: Buffer, error: number, data?: Buffer): Buffer {
  const header = Buffer.alloc(16);
  header.writeUInt32BE(0x67446698, 0);
  header.writeUInt32BE(error, 4);
  cookie.copy(header, 8);
  return data === undefined ? header : Buffer.concat([header, data]);
}

export interface FakeNbdServer {
  url: string;
  connections: number;
  /** NBD_CMD_DISC requests received. */
  discs: number;
  close(): Promise<void>;
}

export async function startFakeNbd(options: FakeNbdOptions): Promise<FakeNbdServer> {
  const sockets = new Set<net.Socket>();
  const state = { connections: 0, discs: 0 };
  const server = net.createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    if (options.oldstyle) {
      const hello = Buffer.alloc(152);
      hello.write("NBDMAGIC", 0, "latin1");
      Buffer.from([0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]).copy(hello, 8);
      socket.write(hello);
      return;
    }
    const hello = Buffer.alloc(18);
    hello.write("NBDMAGIC", 0, "latin1");
    hello.write("IHAVEOPT", 8, "latin1");
    hello.writeUInt16BE(3, 16);
    socket.write(hello);
    let buffer = Buffer.alloc(0);
    let phase: "flags" | "options" | "transmission" = "flags";
    let structured = false;
    const optReply = (option: number, type: number, data = Buffer.alloc(0)) => {
      const h = Buffer.alloc(20);
      Buffer.from([0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]).copy(h, 0);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(type >>> 0, 12);
      h.writeUInt32BE(data.length, 16);
      socket.write(Buffer.concat([h, data]));
    };
    socket.on("data", (data) => {
      buffer = Buffer.concat([buffer, data]);
      for (;;) {
        if (phase === "flags") {
          if (buffer.length < 4) return;
          buffer = buffer.subarray(4);
          phase = "options";
        } else if (phase === "options") {
          if (buffer.length < 16) return;
          const option = buffer.readUInt32BE(8);
          const length = buffer.readUInt32BE(12);
          if (buffer.length < 16 + length) return;
          buffer = buffer.subarray(16 + length);
          if (option === 8) {
            structured = options.structured;
            optReply(option, structured ? 1 : 0x80000001);
          } else if ((option === 6 || option === 7) && options.noGo) {
            optReply(option, 0x80000001);
          } else if (option === 1) {
            const reply = Buffer.alloc(10); // the client asked for NO_ZEROES
            reply.writeBigUInt64BE(BigInt(options.size), 0);
            reply.writeUInt16BE(1 | 2, 8);
            socket.write(reply);
            phase = "transmission";
          } else if (option === 6 || option === 7) {
            if (options.goError !== undefined) {
              optReply(option, options.goError, Buffer.from("fake server says no"));
              continue;
            }
            const info = Buffer.alloc(12);
            info.writeUInt16BE(0, 0);
            info.writeBigUInt64BE(BigInt(options.size), 2);
            info.writeUInt16BE(1 | 2, 10);
            optReply(option, 3, info);
            optReply(option, 1);
            if (option === 7) phase = "transmission";
          } else if (option === 2) {
            optReply(option, 1);
            socket.end();
            return;
          } else {
            optReply(option, 0x80000001);
          }
        } else {
          if (buffer.length < 28) return;
          const type = buffer.readUInt16BE(6);
          const cookie = Buffer.from(buffer.subarray(8, 16));
          const offset = Number(buffer.readBigUInt64BE(16));
          const length = buffer.readUInt32BE(24);
          buffer = buffer.subarray(28);
          if (type === 2) {
            state.discs++;
            socket.end();
            return;
          }
          if (type === 0) options.onRead({ cookie, offset, length }, socket);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `nbd://127.0.0.1:${port}/`,
    get connections() {
      return state.connections;
    },
    get discs() {
      return state.discs;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
