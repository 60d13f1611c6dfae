//! User types on the manager: Python's `BaseManager.register`.
//!
//! A type implements [`Shared`]: a name, how it is made, and a table of
//! methods, each a plain function `fn(&mut Self, A) -> R`. The server looks a
//! method up by name in that table; nothing else a client sends can pick code.
//! A [`Method`] constant names a method and fixes its argument and result
//! types, so a proxy call is typed on both sides.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::proto::{Code, Reply};

/// A type that can live on a manager server, reached through a
/// [`Proxy`](super::Proxy) whose methods are remote calls.
///
/// Register it with [`ManagerBuilder::register`](super::ManagerBuilder::register)
/// (for [`Manager::start`](super::Manager::start)) or [`register`] (before
/// [`Manager::serve`](super::Manager::serve)). Each method runs on the server
/// with the object locked, so a method is an atomic update.
///
/// # Examples
///
/// ```
/// use multiproc::manager::{Manager, Method, Methods, Shared};
///
/// #[derive(Default)]
/// struct Counter { n: u64 }
///
/// const ADD: Method<Counter, u64, u64> = Method::new("add");
/// const GET: Method<Counter, (), u64> = Method::new("get");
///
/// impl Shared for Counter {
///     const NAME: &'static str = "Counter";
///     type Init = u64;
///     fn create(start: u64) -> Counter { Counter { n: start } }
///     fn methods(m: &mut Methods<Counter>) {
///         m.add(ADD, |c, by| { c.n += by; c.n });
///         m.add(GET, |c, ()| c.n);
///     }
/// }
///
/// let manager = Manager::builder().register::<Counter>().start()?;
/// let counter = manager.shared::<Counter>(10)?;
/// assert_eq!(counter.call(ADD, 5)?, 15);
/// assert_eq!(counter.call(GET, ())?, 15);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub trait Shared: Send + Sized + 'static {
    /// The name clients use for the type; unique on a server.
    const NAME: &'static str;
    /// What [`create`](Shared::create) takes: the argument of `manager.shared::<T>(init)`.
    type Init: Serialize + DeserializeOwned;
    /// Makes the server's object.
    fn create(init: Self::Init) -> Self;
    /// Declares the methods clients may call.
    fn methods(methods: &mut Methods<Self>);
}

/// A method of `T` taking `A` and returning `R`, by name: declare it once
/// as a constant, add it to the type's [`Methods`], and call it through a
/// [`Proxy`](super::Proxy) ([`Shared`] shows the whole of it).
///
/// # Examples
///
/// ```
/// use multiproc::manager::Method;
///
/// struct Counter;
/// const ADD: Method<Counter, u64, u64> = Method::new("add");
/// assert_eq!(ADD.name(), "add");
/// ```
pub struct Method<T, A, R> {
    name: &'static str,
    _types: PhantomData<fn(T, A) -> R>,
}

impl<T, A, R> Method<T, A, R> {
    /// The method called `name` (unique among `T`'s methods).
    pub const fn new(name: &'static str) -> Self {
        Method { name, _types: PhantomData }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<T, A, R> Clone for Method<T, A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, A, R> Copy for Method<T, A, R> {}

type Erased<T> = Box<dyn Fn(&mut T, &[u8]) -> Reply + Send + Sync>;

/// The method table of a [`Shared`] type, filled in by
/// [`Shared::methods`] (see [`Shared`] for an example).
pub struct Methods<T> {
    table: HashMap<&'static str, Erased<T>>,
}

impl<T: 'static> Methods<T> {
    /// Adds method `m`, run by `f` on the server.
    pub fn add<A, R>(&mut self, m: Method<T, A, R>, f: fn(&mut T, A) -> R) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        let name = m.name;
        let call = move |obj: &mut T, args: &[u8]| -> Reply {
            let args: A = match crate::codec::decode(args) {
                Ok(a) => a,
                Err(e) => {
                    return Reply::err(
                        Code::Protocol,
                        format!("the arguments of method {name} do not decode: {e}"),
                    )
                }
            };
            let out = crate::task::catch_panic(|| f(obj, args));
            match out {
                Ok(r) => match crate::codec::encode(&r) {
                    Ok(bytes) => Reply::Value(bytes),
                    Err(e) => Reply::err(
                        Code::Protocol,
                        format!("the result of method {name} does not encode: {e}"),
                    ),
                },
                Err(failure) => Reply::err(
                    Code::Protocol,
                    format!("method {name} panicked on the server: {}", failure.message),
                ),
            }
        };
        self.table.insert(name, Box::new(call));
        self
    }
}

/// A registered object as the server holds it.
pub(crate) trait UserObject: Send {
    fn call(&mut self, name: &str, args: &[u8]) -> Reply;
}

struct Holder<T: Shared> {
    value: T,
    methods: &'static Methods<T>,
}

impl<T: Shared> UserObject for Holder<T> {
    fn call(&mut self, name: &str, args: &[u8]) -> Reply {
        match self.methods.table.get(name) {
            Some(f) => f(&mut self.value, args),
            None => Reply::err(
                Code::NotRegistered,
                format!("{} has no method {name:?} registered on this manager", T::NAME),
            ),
        }
    }
}

type Maker = fn(&[u8]) -> Result<Box<dyn UserObject>, Reply>;

fn types() -> &'static Mutex<HashMap<&'static str, Maker>> {
    static TYPES: OnceLock<Mutex<HashMap<&'static str, Maker>>> = OnceLock::new();
    TYPES.get_or_init(Default::default)
}

fn make<T: Shared>(init: &[u8]) -> Result<Box<dyn UserObject>, Reply> {
    let init: T::Init = crate::codec::decode(init).map_err(|e| {
        Reply::err(
            Code::Protocol,
            format!("the initial value of a {} does not decode: {e}", T::NAME),
        )
    })?;
    let methods = methods_of::<T>();
    let value = crate::task::catch_panic(|| T::create(init)).map_err(|f| {
        Reply::err(Code::Protocol, format!("{}::create panicked: {}", T::NAME, f.message))
    })?;
    Ok(Box::new(Holder { value, methods }))
}

/// The method table of `T`, built once per process and kept for its life.
fn methods_of<T: Shared>() -> &'static Methods<T> {
    use std::any::{Any, TypeId};
    static TABLES: OnceLock<Mutex<HashMap<TypeId, &'static (dyn Any + Send + Sync)>>> =
        OnceLock::new();
    let mut tables = TABLES.get_or_init(Default::default).lock();
    let table = tables.entry(TypeId::of::<T>()).or_insert_with(|| {
        let mut m = Methods::<T> { table: HashMap::new() };
        T::methods(&mut m);
        Box::leak(Box::new(m))
    });
    table.downcast_ref::<Methods<T>>().expect("the table of a type is of that type")
}

/// Registers `T` with the manager servers this process runs
/// ([`Manager::serve`](super::Manager::serve)). A server started with
/// [`Manager::start`] gets the types of its
/// [`ManagerBuilder::register`](super::ManagerBuilder::register) instead.
///
/// [`Manager::start`]: super::Manager::start
pub fn register<T: Shared>() {
    types().lock().insert(T::NAME, make::<T>);
}

/// The registration entry a server process runs for `T` (a task entry).
pub(crate) fn register_task<T: Shared>(_: ()) {
    register::<T>();
}

pub(crate) fn create(name: &str, init: &[u8]) -> Result<Box<dyn UserObject>, Reply> {
    let maker = types().lock().get(name).copied();
    match maker {
        Some(make) => make(init),
        None => Err(Reply::err(
            Code::NotRegistered,
            format!("no type {name:?} is registered on this manager"),
        )),
    }
}
