/* vqc-worker.js - decodes .vqc files in a web worker with the WebAssembly build of the vqc
 * decoder core (native/build/vqc.wasm, built by `make -C native/web`).  Driven by vqc.js.
 *
 * Messages in:  {type: 'init', wasmUrl, wasmScalarUrl, modelsBase, maxPixels}
 *               {type: 'decode', id, bytes: ArrayBuffer}
 * Messages out: {id, ok: true, width, height, mode, data: ArrayBuffer (RGBA), ms}
 *               {id, ok: false, kind: 'format'|'model'|'limit'|'internal', code, message}
 */
'use strict';

/* SPEC.md "Model file": the released models and the SHA-256 of their files. */
const RELEASED = {
  'vqc-f8k1024-v1': 'cfbb43da95d18adc6ef8535e92fd06aaa79ea13664f776e86a90463fd57ff7a1',
  'vqc-f4k512-v1': '2313ca46b002bd67ca28e50cc678554494ccef6fe037b1bbf63560deb56c7208',
  'vqc-f8k1024-v2': '6333396de1174b59d5e92c7764c0de97a9f2b8b7ca3be40b60952b07ef4a95b3',
  'vqc-f4k512-v2': '21e58d27f53f6e4a560c8ff8a0c129ff447bbad93b6323807905646022120b5b',
};
const NAME_RE = /^[a-z0-9][a-z0-9.-]{0,31}$/;
const MODEL_MAX_BYTES = 32 * 1024 * 1024;
const KINDS = { 1: 'internal', 3: 'format', 5: 'model', 6: 'limit' };

class VqcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
    this.kind = KINDS[code] || 'internal';
  }
}

let cfg = null;
let wasm = null;            // Promise<exports>
const models = new Map();   // name -> Promise<{ptr, id}>

const hex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, '0')).join('');

function wasiStubs() {
  const ENOSYS = 52;
  return { wasi_snapshot_preview1: {
    fd_close: () => ENOSYS, fd_seek: () => ENOSYS, fd_write: () => ENOSYS,
    proc_exit: (c) => { throw new VqcError(1, `wasm exit ${c}`); },
  } };
}

async function instantiate(url) {
  const resp = await fetch(url);
  if (!resp.ok) throw new VqcError(1, `cannot load ${url}: HTTP ${resp.status}`);
  const { instance } = await WebAssembly.instantiate(await resp.arrayBuffer(), wasiStubs());
  instance.exports._initialize();
  return instance.exports;
}

function getWasm() {
  if (!wasm) {
    wasm = instantiate(cfg.wasmUrl).catch((e) => {
      // a browser without WASM SIMD128 cannot compile vqc.wasm: use the scalar build
      if (e instanceof WebAssembly.CompileError && cfg.wasmScalarUrl) return instantiate(cfg.wasmScalarUrl);
      throw e;
    });
    wasm.catch(() => { wasm = null; });
  }
  return wasm;
}

function coreError(x) {
  const code = x.vqcw_err_code() || 1;
  const p = x.vqcw_err_msg();
  const mem = new Uint8Array(x.memory.buffer);
  let end = p;
  while (mem[end]) end++;
  const msg = new TextDecoder().decode(mem.subarray(p, end)) || 'error';
  return new VqcError(code, msg);
}

function copyIn(x, bytes) {
  const p = x.vqcw_alloc(bytes.length);
  if (!p) throw new VqcError(1, 'out of memory');
  new Uint8Array(x.memory.buffer).set(bytes, p);
  return p;
}

/* Fetch, hash-check and load one model file; the promise is cached by name. */
async function loadModel(x, name) {
  const url = new URL(`${name}.safetensors`, cfg.modelsBase).href;
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new VqcError(5, `model ${name}: cannot fetch ${url} (${e.message})`);
  }
  if (!resp.ok) throw new VqcError(5, `unknown model '${name}': ${url} gives HTTP ${resp.status}`);
  const len = Number(resp.headers.get('content-length') || 0);
  if (len > MODEL_MAX_BYTES) throw new VqcError(5, `model ${name}: file of ${len} bytes is above 32 MiB`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  if (bytes.length > MODEL_MAX_BYTES) throw new VqcError(5, `model ${name}: file of ${bytes.length} bytes is above 32 MiB`);
  const sha = hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
  if (RELEASED[name] && sha !== RELEASED[name])
    throw new VqcError(5, `model ${name}: ${url} has SHA-256 ${sha}, the released model has ${RELEASED[name]}`);
  const p = copyIn(x, bytes);
  let ptr;
  try {
    ptr = x.vqcw_model_load(p, bytes.length);
    if (!ptr) throw coreError(x);
  } finally {
    x.vqcw_free(p);
  }
  return { ptr, id: sha.slice(0, 16), url };
}

function getModel(x, name, id) {
  if (!NAME_RE.test(name)) return Promise.reject(new VqcError(5, `unknown model '${name}' (not a model name)`));
  let m = models.get(name);
  if (!m) {
    m = loadModel(x, name);
    models.set(name, m);
    m.catch(() => models.delete(name));  // a failed fetch may be retried later
  }
  return m.then((model) => {
    if (model.id !== id)
      throw new VqcError(5, `file needs model ${name} with id ${id}, ${model.url} has id ${model.id}`);
    return model;
  });
}

/* The alpha plane: an 8-bit greyscale PNG of width x height (header checked by the core),
   decoded by the browser; gAMA/iCCP are ignored (colorSpaceConversion 'none'). */
async function decodeAlpha(png, width, height) {
  let bmp;
  try {
    bmp = await createImageBitmap(new Blob([png], { type: 'image/png' }),
      { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (e) {
    throw new VqcError(3, 'alpha plane PNG does not decode');
  }
  if (bmp.width !== width || bmp.height !== height) throw new VqcError(3, `alpha plane is not ${width}x${height}`);
  const c = new OffscreenCanvas(width, height);
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(bmp, 0, 0);
  bmp.close();
  return g.getImageData(0, 0, width, height).data;
}

async function decode(buf) {
  const t0 = performance.now();
  const x = await getWasm();
  const bytes = new Uint8Array(buf);
  const fp = copyIn(x, bytes);
  const scratch = x.vqcw_alloc(64);
  let img = 0;
  try {
    if (x.vqcw_peek(fp, bytes.length, cfg.maxPixels, scratch, scratch + 33)) throw coreError(x);
    let mem = new Uint8Array(x.memory.buffer);
    let end = scratch;
    while (mem[end] && end < scratch + 32) end++;
    const name = new TextDecoder().decode(mem.subarray(scratch, end));
    const id = hex(mem.subarray(scratch + 33, scratch + 41));
    const model = await getModel(x, name, id);
    new DataView(x.memory.buffer).setUint32(scratch + 44, model.ptr, true);
    img = x.vqcw_decode(fp, bytes.length, scratch + 44, 1, cfg.maxPixels, 0);
    if (!img) throw coreError(x);
    const dv = new DataView(x.memory.buffer);
    const w = dv.getUint32(img, true), h = dv.getUint32(img + 4, true), ch = dv.getUint32(img + 8, true);
    const px = dv.getUint32(img + 12, true), ap = dv.getUint32(img + 16, true), an = dv.getUint32(img + 20, true);
    mem = new Uint8Array(x.memory.buffer);
    const n = w * h;
    const out = new Uint8ClampedArray(n * 4);
    const src = mem.subarray(px, px + n * ch);
    if (ch === 3) {
      for (let i = 0, j = 0; i < n; i++, j += 3) {
        out[4 * i] = src[j]; out[4 * i + 1] = src[j + 1]; out[4 * i + 2] = src[j + 2]; out[4 * i + 3] = 255;
      }
    } else {
      for (let i = 0; i < n; i++) {
        const v = src[i];
        out[4 * i] = v; out[4 * i + 1] = v; out[4 * i + 2] = v; out[4 * i + 3] = 255;
      }
    }
    const png = an ? mem.slice(ap, ap + an) : null;
    x.vqcw_image_free(img);
    img = 0;
    if (png) {
      const a = await decodeAlpha(png, w, h);
      for (let i = 0; i < n; i++) out[4 * i + 3] = a[4 * i];
    }
    const mode = (ch === 3 ? 'RGB' : 'L') + (png ? 'A' : '');
    return { width: w, height: h, mode, data: out.buffer, ms: performance.now() - t0 };
  } finally {
    if (img) x.vqcw_image_free(img);
    x.vqcw_free(scratch);
    x.vqcw_free(fp);
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.type === 'init') {
    cfg = msg;
    return;
  }
  if (msg.type !== 'decode') return;
  try {
    const r = await decode(msg.bytes);
    self.postMessage({ id: msg.id, ok: true, ...r }, [r.data]);
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) {
      // a trap (e.g. out of memory) leaves the module's heap undefined: start afresh next time
      wasm = null;
      models.clear();
    }
    const err = e instanceof VqcError ? e : new VqcError(1, String((e && e.message) || e));
    self.postMessage({ id: msg.id, ok: false, kind: err.kind, code: err.code, message: err.message });
  }
};
