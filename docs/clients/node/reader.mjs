// A Node reader of a sidecar-state LMDB view (spec.store.engine: lmdb), with the `lmdb` package
// built for LMDB's data format v1 (its prebuilt binaries use v2 and crash on this environment):
//
//   npm install --ignore-scripts        (package.json beside this file: lmdb 3.5.6)
//   (cd node_modules/lmdb && LMDB_DATA_V1=true npx node-gyp rebuild --nodedir=/usr)
//   SIDECAR_STATE_LMDB_PATH=/var/run/sidecar-state-lmdb node reader.mjs flag:new-ui-layout
//
// (--nodedir: where Node's headers are, here Debian's libnode-dev; without it node-gyp
// downloads them.)
// prints {"meta": {...}, "values": {"flag:new-ui-layout": "true"}} (null: no such key).
// The rules the Python client keeps: open `current` read-only with locking, read in short
// transactions, reopen when the old environment says "superseded".
import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';

export class Reader {
  constructor(root) {
    this.root = root;
    this.#open();
  }

  #open() {
    if (this.env) this.env.close();
    const target = path.join(this.root, fs.readlinkSync(path.join(this.root, 'current')));
    this.env = open({ path: target, readOnly: true, maxDbs: 4 });
    const binary = { keyEncoding: 'binary', encoding: 'binary', create: false };
    this.data = this.env.openDB({ name: 'data', ...binary });
    this.meta = this.env.openDB({ name: 'meta', ...binary });
  }

  // fn(transaction) runs in one read snapshot, marked done at once (a long one would pin old
  // pages); reopens once the hydrator has published a new environment.
  #view(fn) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const transaction = this.env.useReadTransaction();
      try {
        if (this.meta.get(Buffer.from('superseded'), { transaction }) === undefined) {
          return fn(transaction);
        }
      } finally {
        transaction.done();
      }
      this.#open();
    }
    throw new Error('the view keeps being replaced; try again');
  }

  getMany(keys) {
    return this.#view((transaction) =>
      Object.fromEntries(
        keys.map((key) => {
          const value = this.data.get(Buffer.from(key), { transaction });
          return [key, value === undefined ? null : Buffer.from(value).toString()];
        }),
      ),
    );
  }

  metadata() {
    return this.#view((transaction) => {
      const out = {};
      for (const { key, value } of this.meta.getRange({ transaction })) {
        const name = Buffer.from(key).toString();
        if (name.includes('/') || name === 'sentinel' || name === 'superseded') continue;
        out[name] = Buffer.from(value).toString();
      }
      return out;
    });
  }
}

const reader = new Reader(process.env.SIDECAR_STATE_LMDB_PATH);
const values = reader.getMany(process.argv.slice(2));
console.log(JSON.stringify({ meta: reader.metadata(), values }));
