// {{name}}: a Tessera service in JavaScript. `tessera build` turns this file (and what it
// imports) into {{name}}.wasm; tessera.js wraps the platform: kv, sql, config, publish.
import { serve, kv, config } from './tessera.js';

const store = kv.open('default');

serve((request) => {
  const greeting = config.get('greeting', 'Hello');
  const visits = store.increment('visits');
  return `${greeting} from JavaScript! This is {{name}}, visit ${visits}.\n`;
});
