//! The request path's route lookup allocates nothing (issue 5): a counting global allocator
//! around `parse_host` + path `normalize` + `RouteTable::lookup`, in a test binary of its own
//! because the allocator is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hawser::catalog::routes::{HostPattern, RouteKey, RouteTable};
use hawser::edge::{host::parse_host, path::normalize};

struct Counting;

thread_local! {
    // Per thread: the test harness's own threads allocate whenever they like.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the proxy does per request before choosing a backend.
fn route(table: &RouteTable<usize>, host: &str, path: &str) -> Option<usize> {
    let host = parse_host(host.as_bytes()).expect("a valid host");
    let path = normalize(path).expect("a valid path");
    table.lookup(&host.host, &path).copied()
}

#[test]
fn route_lookup_allocates_nothing() {
    let mut entries: Vec<(RouteKey, usize)> = (0..1000)
        .map(|i| (RouteKey { host: HostPattern::Exact(format!("svc{i}.example.com")), path_prefix: "/".into() }, i))
        .collect();
    entries.push((RouteKey { host: HostPattern::parse("*.example.net").unwrap(), path_prefix: "/api".into() }, 1000));
    entries.push((RouteKey { host: HostPattern::Any, path_prefix: "/static".into() }, 1001));
    let table = RouteTable::build(entries);
    let cases = [
        ("svc500.example.com:8080", "/items?x=1", Some(500)),
        ("a.example.net", "/api/v1", Some(1000)),
        ("unknown.test", "/static/app.js", Some(1001)),
        ("unknown.test", "/", None),
    ];
    let mut found = Vec::with_capacity(cases.len());
    let before = allocations();
    for (host, path, _) in cases {
        found.push(route(&table, host, path));
    }
    let allocated = allocations() - before;
    assert_eq!(found, cases.iter().map(|c| c.2).collect::<Vec<_>>());
    assert_eq!(allocated, 0, "route lookups allocated {allocated} times");
    // An upper-case Host, and a path that is not in its normal form, are the cases that have
    // to build a copy: one allocation each.
    let before = allocations();
    assert_eq!(route(&table, "SVC1.example.com", "/"), Some(1));
    assert_eq!(allocations() - before, 1);
    let before = allocations();
    assert_eq!(route(&table, "a.example.net", "/x/../api/v1"), Some(1000));
    assert_eq!(allocations() - before, 1);
}
