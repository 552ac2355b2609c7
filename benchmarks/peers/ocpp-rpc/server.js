// Peer: the Node `ocpp-rpc` server (https://github.com/mikuso/ocpp-rpc), as its README shows,
// with strict mode on (every CALL and answer validated against the OCPP 1.6 schemas), answering
// the benchmark's frames. No persistence.  node server.js PORT
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2] || 9001);
const strictMode = process.env.OCPP_RPC_STRICT !== '0';
const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode });

server.on('client', (client) => {
  client.handle('BootNotification', () => ({
    status: 'Accepted',
    interval: 300,
    currentTime: new Date().toISOString(),
  }));
  client.handle('Heartbeat', () => ({ currentTime: new Date().toISOString() }));
  client.handle('StatusNotification', () => ({}));
  client.handle('MeterValues', () => ({}));
});

server.listen(port, '127.0.0.1').then(() => console.log(`ocpp-rpc peer on ${port} (strict ${strictMode})`));
