/* vqc.js - decode .vqc images in the browser (ES module).
 *
 *   import { decode, configure } from './vqc.js';
 *   configure({ modelsBase: '/models/' });          // optional
 *   const imageData = await decode(bytes);          // ArrayBuffer | Uint8Array | Blob
 *   canvas.getContext('2d').putImageData(imageData, 0, 0);
 *
 * The decode runs in web workers (at most 2) with the WebAssembly build of the C decoder core.
 * Model files are fetched from `modelsBase` by the name the .vqc header gives
 * (`<name>.safetensors`), checked against the header's id (first 8 bytes of their SHA-256) and,
 * for the released models, against their full SHA-256 (format/SPEC.md "Model file").
 * Errors reject with a VqcError: .kind is 'format', 'model', 'limit' or 'internal' (.code 3, 5,
 * 6 or 1, like vqc's exit codes) and .message is one line.
 */

export class VqcError extends Error {
  constructor(kind, code, message) {
    super(message);
    this.name = 'VqcError';
    this.kind = kind;
    this.code = code;
  }
}

const here = import.meta.url;
const options = {
  wasmUrl: new URL('../build/vqc.wasm', here).href,
  wasmScalarUrl: new URL('../build/vqc-scalar.wasm', here).href,
  workerUrl: new URL('./vqc-worker.js', here).href,
  modelsBase: new URL('../../models/', here).href,
  maxPixels: 2 ** 26, // like `vqc decompress`
  workers: 2,
};

const pool = []; // {worker, pending: Map(id -> {resolve, reject})}
let nextId = 1;

/* Change where the wasm, the worker and the models come from, the pixel cap or the number of
   workers (1 or 2).  Takes effect for workers started afterwards (call it before decode()). */
export function configure(opts = {}) {
  for (const k of Object.keys(opts)) {
    if (!(k in options)) throw new TypeError(`vqc.configure: unknown option ${k}`);
    const base = globalThis.document ? document.baseURI : globalThis.location.href;
    options[k] = k.endsWith('Url') || k === 'modelsBase' ? new URL(opts[k], base).href : opts[k];
  }
  options.workers = Math.max(1, Math.min(2, options.workers | 0));
}

function startWorker() {
  const worker = new Worker(options.workerUrl);
  const w = { worker, pending: new Map() };
  worker.onmessage = (ev) => {
    const m = ev.data;
    const p = w.pending.get(m.id);
    if (!p) return;
    w.pending.delete(m.id);
    if (m.ok) {
      const img = new ImageData(new Uint8ClampedArray(m.data), m.width, m.height);
      p.resolve(Object.assign(img, { mode: m.mode, workerMs: m.ms }));
    } else {
      p.reject(new VqcError(m.kind, m.code, m.message));
    }
  };
  worker.onerror = (ev) => {
    ev.preventDefault();
    const e = new VqcError('internal', 1, `decoder worker failed: ${ev.message || 'error'}`);
    for (const p of w.pending.values()) p.reject(e);
    w.pending.clear();
    pool.splice(pool.indexOf(w), 1);
    worker.terminate();
  };
  const { wasmUrl, wasmScalarUrl, modelsBase, maxPixels } = options;
  worker.postMessage({ type: 'init', wasmUrl, wasmScalarUrl, modelsBase, maxPixels });
  pool.push(w);
  return w;
}

function pickWorker() {
  let best = null;
  for (const w of pool) if (!best || w.pending.size < best.pending.size) best = w;
  if ((!best || best.pending.size > 0) && pool.length < options.workers) return startWorker();
  return best;
}

/* Decode one .vqc file to RGBA ImageData (grey images have R = G = B; no alpha: A = 255).
   The ImageData also carries .mode ('L', 'LA', 'RGB' or 'RGBA'). */
export async function decode(bytes) {
  let buf;
  if (bytes instanceof Blob) buf = await bytes.arrayBuffer();
  else if (bytes instanceof ArrayBuffer) buf = bytes.slice(0);
  else if (ArrayBuffer.isView(bytes)) buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  else throw new TypeError('vqc.decode: expected an ArrayBuffer, a typed array or a Blob');
  const w = pickWorker();
  const id = nextId++;
  return new Promise((resolve, reject) => {
    w.pending.set(id, { resolve, reject });
    w.worker.postMessage({ type: 'decode', id, bytes: buf }, [buf]);
  });
}

/* Stop the workers (they start again on the next decode). */
export function terminate() {
  for (const w of pool.splice(0)) {
    w.worker.terminate();
    for (const p of w.pending.values()) p.reject(new VqcError('internal', 1, 'decoder terminated'));
  }
}
