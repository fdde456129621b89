'use strict';
/*
 * Stand-ins for the parts of LuCI the views use (L, E, _, form, fs, ui,
 * uci, poll, dom, rpc, baseclass, view), recording what a view asks for:
 * the commands it runs (with their arguments), the polls it adds, the
 * modals and notifications it shows, and every section and option a
 * form.Map declares. A view file is loaded the way LuCI's loader does it:
 * its leading 'require NAME [as ALIAS]' directives name the classes passed
 * to the file's body, which returns the view.
 */

const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const APP = path.resolve(__dirname, '..');
const RESOURCES = path.join(APP, 'htdocs/luci-static/resources');

/* A tiny DOM: enough for E(), dom.content() and reading the text back. */
class Node {
	constructor(tag, attrs, children) {
		this.tag = tag;
		this.attrs = attrs || {};
		this.children = [];
		this.value = this.attrs.value;
		append(this, children);
	}
	get textContent() {
		return this.children.map(c => (c instanceof Node) ? c.textContent : String(c)).join('');
	}
	/* Depth-first search by predicate. */
	findAll(pred, out = []) {
		if (pred(this))
			out.push(this);
		for (const c of this.children)
			if (c instanceof Node)
				c.findAll(pred, out);
		return out;
	}
	find(pred) {
		return this.findAll(pred)[0] || null;
	}
	byId(id) {
		return this.find(n => n.attrs.id === id);
	}
	buttons() {
		return this.findAll(n => n.tag === 'button');
	}
	button(label) {
		return this.find(n => n.tag === 'button' && n.textContent === label);
	}
	click() {
		if (typeof this.attrs.click !== 'function')
			throw new Error(`<${this.tag}> ${this.textContent} has no click handler`);
		return this.attrs.click({ target: this, currentTarget: this });
	}
}

function append(node, children) {
	if (children == null)
		return;
	if (!Array.isArray(children))
		children = [children];
	for (const c of children) {
		if (c == null || c === false)
			continue;
		if (c instanceof Node && c.tag === '#fragment')
			node.children.push(...c.children);
		else if (Array.isArray(c))
			append(node, c);
		else
			node.children.push(c);
	}
}

function E(tag, attrs, children) {
	if (Array.isArray(tag))
		return new Node('#fragment', {}, attrs === undefined ? tag : attrs);
	if (Array.isArray(attrs) || typeof attrs === 'string' || attrs instanceof Node) {
		children = attrs;
		attrs = {};
	}
	return new Node(tag, attrs, children);
}

/* --- form: records declarations ------------------------------------ */

class AbstractValue {
	constructor(section, name, title, description) {
		this.section = section;
		this.map = section.map;
		this.option = name;
		this.title = title;
		this.description = description;
		this.values = [];
		this.deps = [];
	}
	value(key, label) {
		this.values.push([key, label]);
	}
	depends(field, value) {
		this.deps.push(typeof field === 'object' ? field : { [field]: value });
	}
	/* What LuCI's validation would say: the datatype (the few the views
	 * use) and then the validate function, true or an error text. */
	check(sid, v) {
		if (v !== '' && this.datatype && !datatype(this.datatype, v))
			return `datatype ${this.datatype}`;
		return this.validate ? this.validate.call(this, sid, v) : true;
	}
}

function classOf(kind) {
	return class extends AbstractValue {
		constructor(...a) {
			super(...a);
			this.kind = kind;
		}
	};
}

function datatype(dt, v) {
	switch (dt) {
	case 'port': return /^[0-9]+$/.test(v) && +v >= 1 && +v <= 65535;
	case 'uinteger': return /^[0-9]+$/.test(v);
	default: throw new Error(`datatype ${dt} has no stand-in`);
	}
}

class AbstractSection {
	constructor(map, kind, type, name, title, description) {
		this.map = map;
		this.kind = kind;
		this.sectiontype = type;
		this.sectionname = name;
		this.title = title;
		this.description = description;
		this.tabs = [];
		this.tabTitles = {};
		this.options = [];
		this.formvalues = {};
	}
	tab(name, title) {
		this.tabs.push(name);
		this.tabTitles[name] = title;
	}
	option(cls, name, ...rest) {
		return this.taboption(null, cls, name, ...rest);
	}
	taboption(tab, cls, name, ...rest) {
		if (tab !== null && !this.tabs.includes(tab))
			throw new Error(`tab ${tab} used before s.tab()`);
		const o = new cls(this, name, ...rest);
		o.tab = tab;
		this.options.push(o);
		return o;
	}
	/* Tests set what the form holds with setForm(). */
	formvalue(sid, name) {
		return (this.formvalues[sid] || {})[name];
	}
	setForm(sid, values) {
		this.formvalues[sid] = values;
	}
}

function sectionClass(kind, named) {
	return class extends AbstractSection {
		constructor(map, a, b, c, d) {
			if (named)
				super(map, kind, b, a, c, d);
			else
				super(map, kind, a, null, b, c);
		}
	};
}

class LMap {
	constructor(config, title, description) {
		this.config = config;
		this.title = title;
		this.description = description;
		this.sections = [];
		this.data = modules.uci;
		env.recorded.maps.push(this);
	}
	section(cls, ...args) {
		const s = new cls(this, ...args);
		this.sections.push(s);
		return s;
	}
	render() {
		return Promise.resolve(E('div', { 'class': 'cbi-map', 'data-config': this.config }));
	}
}

/* --- the environment ---------------------------------------------- */

const env = {
	recorded: null,
	/* when set: (cmd, args) -> Promise of { code, stdout, stderr }, for
	 * every command (the live tests run the real CLI through it) */
	execHandler: null,
	/* command line -> { code, stdout, stderr } or a function of the args */
	exec: {},
	uci: {}
};

function reset() {
	env.recorded = { execs: [], polls: [], modals: [], notifications: [], maps: [], uciLoads: [], uciReads: [], missing: [] };
	env.exec = {};
	env.uci = {};
	env.execHandler = null;
}
reset();

const modules = {
	baseclass: { extend: proto => Object.assign(Object.create({}), proto) },
	view: { extend: proto => Object.assign(Object.create({ handleSaveApply() {}, handleSave() {}, handleReset() {} }), proto) },
	form: {
		Map: LMap,
		NamedSection: sectionClass('NamedSection', true),
		TypedSection: sectionClass('TypedSection', false),
		GridSection: sectionClass('GridSection', false),
		TableSection: sectionClass('TableSection', false),
		Value: classOf('Value'),
		Flag: classOf('Flag'),
		ListValue: classOf('ListValue'),
		DynamicList: classOf('DynamicList'),
		DummyValue: classOf('DummyValue'),
		TextValue: classOf('TextValue')
	},
	fs: {
		exec(cmd, args) {
			const line = [cmd].concat(args || []).join(' ');
			env.recorded.execs.push({ cmd, args: args || [], line });
			if (env.execHandler)
				return env.execHandler(cmd, args || []);
			let r = env.exec[line];
			if (r === undefined)
				for (const key of Object.keys(env.exec))
					if (key.endsWith('*') && line.startsWith(key.slice(0, -1)))
						r = env.exec[key];
			if (typeof r === 'function')
				r = r(args);
			if (r === undefined)
				return Promise.reject(new Error(`stand-in: no answer for ${line}`));
			return Promise.resolve(r);
		},
		exec_direct(cmd, args) {
			return modules.fs.exec(cmd, args).then(r => r.stdout);
		}
	},
	ui: {
		showModal(title, children) {
			const node = E('div', { 'class': 'modal' }, children);
			env.recorded.modals.push({ title, node, open: true });
			return node;
		},
		hideModal() {
			for (const m of env.recorded.modals)
				m.open = false;
		},
		addNotification(title, children, cls) {
			env.recorded.notifications.push({ title, node: E('div', {}, children), cls });
		},
		createHandlerFn(ctx, fn, ...args) {
			const f = typeof fn === 'string' ? ctx[fn] : fn;
			return ev => f.call(ctx, ...args, ev);
		}
	},
	/* A config the test did not put in env.uci does not exist: load()
	 * rejects, as rpcd's uci.get does for a missing file. */
	uci: {
		load(config) {
			env.recorded.uciLoads.push(config);
			return (config in env.uci) ? Promise.resolve(config) : Promise.reject(new Error(`uci: no config ${config}`));
		},
		sections(config, type) {
			env.recorded.uciReads.push(config);
			return ((env.uci[config] || {})[type] || []).map((s, i) => Object.assign({ '.name': `cfg${i}`, '.type': type }, s));
		},
		get(config, sid, opt) {
			env.recorded.uciReads.push(config);
			for (const list of Object.values(env.uci[config] || {}))
				for (const s of list)
					if (s['.name'] === sid)
						return opt ? s[opt] : s;
			return null;
		}
	},
	poll: {
		add(fn, interval) {
			env.recorded.polls.push({ fn, interval });
		},
		remove() {}
	},
	dom: {
		content(node, children) {
			node.children = [];
			append(node, children);
			return node;
		}
	},
	rpc: {
		declare(opts) {
			return () => Promise.reject(new Error(`stand-in: rpc ${opts.object}.${opts.method} is not expected`));
		}
	}
};

const L = {
	resolveDefault: (p, d) => Promise.resolve(p).catch(() => d),
	bind: (fn, ctx, ...args) => fn.bind(ctx, ...args),
	Poll: modules.poll,
	Class: modules.baseclass,
	view: modules.view,
	env: {}
};

/* JSON.parse for the views: the parsed value records every read of a
 * field it does not have (a view reading a field the daemon's JSON lacks). */
const NOT_FIELDS = new Set(['then', 'toJSON']);
function track(v, where) {
	if (v === null || typeof v !== 'object')
		return v;
	return new Proxy(v, {
		get(t, k, r) {
			if (typeof k === 'string' && !NOT_FIELDS.has(k) && !(k in t))
				env.recorded.missing.push(`${where}.${k}`);
			const x = Reflect.get(t, k, r);
			return (typeof k === 'string' && Object.prototype.hasOwnProperty.call(t, k)) ? track(x, Array.isArray(t) ? `${where}[]` : `${where}.${k}`) : x;
		}
	});
}
const trackingJSON = { parse: s => track(JSON.parse(s), '$'), stringify: JSON.stringify };

/* The leading 'require X' / 'require X as Y' strings of a LuCI class file. */
function requires(source) {
	const out = [];
	const re = /^\s*(['"])(use strict|require ([\w.]+)(?: as (\w+))?)\1;/;
	let rest = source.replace(/^(\s*(\/\*[\s\S]*?\*\/|\/\/[^\n]*))*/, '');
	for (;;) {
		const m = re.exec(rest);
		if (!m)
			break;
		if (m[3]) {
			const name = m[3];
			out.push({ module: name, as: m[4] || name.split('.').pop() });
		}
		rest = rest.slice(m[0].length);
	}
	return out;
}

/* Loads a view (path relative to resources/, without .js); returns the
 * object its file returns. */
function load(rel) {
	const file = path.join(RESOURCES, rel + '.js');
	const source = fs.readFileSync(file, 'utf8');
	const reqs = requires(source);
	for (const r of reqs)
		if (!(r.module in modules))
			throw new Error(`${rel}: 'require ${r.module}' has no stand-in`);
	const names = reqs.map(r => r.as);
	const context = vm.createContext({ L, E, _: s => s, N_: (n, s, p) => (n == 1 ? s : p), console, Promise, JSON: trackingJSON, Math, Object, String, Number, Array, Error, RegExp });
	const fn = vm.runInContext(`(function(${names.join(', ')}) {\n${source}\n})`, context, { filename: file, lineOffset: -1 });
	return fn(...reqs.map(r => modules[r.module]));
}

module.exports = { env, reset, load, requires, E, Node, RESOURCES, APP, modules };
