/*
 * chargegrid-live.js: live events from a chargegrid server, in the browser, no build step.
 *
 *   <script src="/static/chargegrid-live.js"></script>
 *   const live = new ChargegridLive({ token: "cg_..." });   // or rely on the dashboard cookie
 *   const sub = live.subscribeToChargePoint("CP001", {
 *     onStatusChange: (s) => ..., onSessionStarted: (session) => ..., onSessionStopped: (session) => ...,
 *     onMeterValue: (v) => ..., onEnergy, onPower, onVoltage, onCurrent, onSoC, onTemperature,
 *     onConnection: (c) => ..., onAlert: (a) => ..., onOperation: (op) => ...,
 *     onLiveStats: (s) => ...,   // per connector: power, session energy, min/max/avg per measurand
 *     onSubscribed: () => ...,   // the server confirmed the subscription (again after reconnects)
 *   });
 *   const fleet = live.subscribeToFleet({ onStatusChange, onSessionStarted, onStats, ... });
 *   sub.unsubscribe(); live.close();
 *
 * Payloads are the server's (see docs/live.md): status {connector_id, status, error_code, info,
 * timestamp}; sessions {event, session}; meter values {connector_id, measurand, value, unit,
 * phase, context, timestamp, session_id}. The connection reconnects by itself with backoff and
 * re-subscribes; callbacks receive (data, envelope) where envelope has id, topic, charge_point.
 */
(function (global) {
  "use strict";

  var MEASURAND_CALLBACKS = {
    "Energy.Active.Import.Register": "onEnergy",
    "Power.Active.Import": "onPower",
    "Voltage": "onVoltage",
    "Current.Import": "onCurrent",
    "SoC": "onSoC",
    "Temperature": "onTemperature",
  };

  function dispatch(callbacks, envelope) {
    var data = envelope.data;
    switch (envelope.topic) {
      case "status":
        call(callbacks.onStatusChange, data, envelope);
        break;
      case "sessions":
        if (data.event === "started") call(callbacks.onSessionStarted, data.session, envelope);
        else if (data.event === "stopped") call(callbacks.onSessionStopped, data.session, envelope);
        break;
      case "meter_values":
        call(callbacks.onMeterValue, data, envelope);
        var name = MEASURAND_CALLBACKS[data.measurand];
        if (name) call(callbacks[name], data, envelope);
        break;
      case "connection":
        call(callbacks.onConnection, data, envelope);
        break;
      case "alerts":
        call(callbacks.onAlert, data, envelope);
        break;
      case "operations":
        call(callbacks.onOperation, data, envelope);
        break;
      case "stats":
        call(callbacks.onStats, data, envelope);
        break;
      case "live_stats":
        call(callbacks.onLiveStats, data, envelope);
        break;
    }
  }

  function call(fn, data, envelope) {
    if (typeof fn !== "function") return;
    try {
      fn(data, envelope);
    } catch (error) {
      if (global.console) global.console.error("chargegrid-live callback failed", error);
    }
  }

  function ChargegridLive(options) {
    options = options || {};
    var loc = global.location;
    var base = options.url;
    if (!base) {
      base = (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/api/v1/live";
    }
    this._url = options.token ? base + "?token=" + encodeURIComponent(options.token) : base;
    this._subscriptions = [];
    this._backoff = 500;
    this._closed = false;
    this.onStateChange = options.onStateChange || null;
    this._connect();
  }

  ChargegridLive.prototype._connect = function () {
    var self = this;
    var socket = new global.WebSocket(this._url);
    this._socket = socket;
    socket.onopen = function () {
      self._backoff = 500;
      self._subscriptions.forEach(function (sub) { self._send(sub._message("subscribe")); });
      if (self.onStateChange) self.onStateChange("open");
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "event") {
        self._subscriptions.forEach(function (sub) { if (sub._matches(message)) dispatch(sub.callbacks, message); });
      } else if (message.type === "subscribed") {
        self._subscriptions.forEach(function (sub) {
          if (sub._confirms(message)) call(sub.callbacks.onSubscribed, message, message);
        });
      } else if (message.type === "error" && global.console) {
        global.console.warn("chargegrid-live:", message.error);
      }
    };
    socket.onclose = function () {
      if (self.onStateChange) self.onStateChange("closed");
      if (self._closed) return;
      var delay = self._backoff;
      self._backoff = Math.min(self._backoff * 2, 15000);
      global.setTimeout(function () { if (!self._closed) self._connect(); }, delay + Math.random() * 250);
    };
  };

  ChargegridLive.prototype._send = function (message) {
    if (this._socket && this._socket.readyState === 1) this._socket.send(JSON.stringify(message));
  };

  function Subscription(live, chargePoint, topics, callbacks) {
    this._live = live;
    this.chargePoint = chargePoint;
    this.topics = topics;
    this.callbacks = callbacks || {};
  }

  Subscription.prototype._message = function (type) {
    var message = { type: type };
    if (this.chargePoint === null) message.fleet = true;
    else message.charge_point = this.chargePoint;
    if (this.topics) message.topics = this.topics;
    return message;
  };

  Subscription.prototype._matches = function (envelope) {
    if (this.topics && this.topics.indexOf(envelope.topic) < 0) return false;
    if (this.chargePoint === null) return envelope.fleet === true;
    return envelope.fleet !== true && envelope.charge_point === this.chargePoint;
  };

  Subscription.prototype._confirms = function (message) {
    if (this.chargePoint === null) return message.fleet === true;
    return message.charge_point === this.chargePoint;
  };

  Subscription.prototype.unsubscribe = function () {
    var list = this._live._subscriptions;
    var index = list.indexOf(this);
    if (index >= 0) list.splice(index, 1);
    this._live._send(this._message("unsubscribe"));
  };

  ChargegridLive.prototype._subscribe = function (chargePoint, topics, callbacks) {
    var sub = new Subscription(this, chargePoint, topics, callbacks);
    this._subscriptions.push(sub);
    this._send(sub._message("subscribe"));
    return sub;
  };

  /** All of a charge point's live events (or only `topics`). */
  ChargegridLive.prototype.subscribeToChargePoint = function (id, callbacks, topics) {
    return this._subscribe(String(id), topics || null, callbacks);
  };

  /** Fleet-wide events: status, sessions, connection, alerts, operations, stats. */
  ChargegridLive.prototype.subscribeToFleet = function (callbacks, topics) {
    return this._subscribe(null, topics || null, callbacks);
  };

  // The reference guide's three functions.
  ChargegridLive.prototype.subscribeToChargePointStatus = function (id, callbacks) {
    return this._subscribe(String(id), ["status"], callbacks);
  };
  ChargegridLive.prototype.subscribeToSessions = function (id, callbacks) {
    return this._subscribe(String(id), ["sessions"], callbacks);
  };
  ChargegridLive.prototype.subscribeToMeterValues = function (id, callbacks) {
    return this._subscribe(String(id), ["meter_values"], callbacks);
  };

  ChargegridLive.prototype.close = function () {
    this._closed = true;
    if (this._socket) this._socket.close();
  };

  global.ChargegridLive = ChargegridLive;
})(typeof window !== "undefined" ? window : this);
